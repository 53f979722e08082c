"""Storage formats of a shard set; nothing here knows about models.

manifest.py  the versioned contract between prep and train
storage.py   URL-style paths, atomic writes, checksums
webdataset.py  tar shards: one record per track, int16 PCM per source
"""
