"""Output: file formats and the output plan: TIFF assembly and its journal, COG levels, HDF5 store, quicklook,
profiles and paths."""
