"""``dino demo``: a local Gradio web app for attention masks, image search, copy checks and video masks.

The demo holds no algorithm of its own: each tab calls one adapter in :mod:`demo.adapters`, and each
adapter calls the public functions of one app (``apps.segmentation``, ``apps.retrieval`` with
``dino.search.index``, ``apps.copy_detection``, ``apps.video_seg``).
"""
