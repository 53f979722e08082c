"""Open-Unmix's defaults that several stages share, spelled once.

prep computes the input statistics for the default STFT, training defaults to it, and separation
(umx-separate, umx-eval and the in-training scoring) filters with the same EM settings."""

NFFT = 4096  # STFT window (open-unmix's --nfft)
NHOP = 1024  # STFT hop (open-unmix's --nhop)
STFT = (NFFT, NHOP)
NITER = 1  # Wiener EM iterations (open-unmix's separate default)
WIENER_WIN_LEN = 300  # frames filtered together (open-unmix's separate default)
SAMPLE_RATE = 44100
