"""Image search, shared by retrieval and copy detection: global descriptors (pooling, whitening, L2) and a FAISS
index saved with the manifest that says how they were made (SPEC §12, §13)."""

from dino.lazy import lazy_exports

__all__ = [
    "DescriptorExtractor",
    "DescriptorRecipe",
    "Hit",
    "ImageIndex",
    "IndexMismatchError",
    "Whitening",
    "build_index",
    "search_images",
    "update_index",
]

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "DescriptorExtractor": "dino.search.descriptors",
        "DescriptorRecipe": "dino.search.descriptors",
        "Hit": "dino.search.index",
        "ImageIndex": "dino.search.index",
        "IndexMismatchError": "dino.search.index",
        "Whitening": "dino.search.whitening",
        "build_index": "dino.search.index",
        "search_images": "dino.search.index",
        "update_index": "dino.search.index",
    },
)
