"""File formats read and written without torch: safetensors (our deterministic writer) and
dlib's serialisation (the .dat files our converters read)."""
