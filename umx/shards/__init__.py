"""Storage formats of a shard set; nothing here knows about models.

manifest.py  the versioned contract between prep and train
storage.py   URL-style paths, atomic writes, checksums
records.py     TrackRecord: one track as stored, int16 PCM per source (any format)
webdataset.py  tar shards: one record per track; the writer, and read_shard (streaming remote ones)
local_tar.py   read_shard's random-access reader of local tar shards
"""
