"""`h36m extract`: a release -> the extracted dataset. extract: the command; plan: what to do; store: the records,
manifest and lock; dataset: the extracted format (read and write, importable alone); crop: the pixel geometry of a
crop; decode: ffmpeg's frames; spool: crops waiting for their row."""
