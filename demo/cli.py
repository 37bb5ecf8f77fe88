"""``dino demo``: serve the web demo on this machine."""

from __future__ import annotations

import argparse

from dino.cli.arguments import (
    add_grid_layer_argument,
    add_weights_arguments,
    backbone_from_args,
    cosine_threshold,
    dense_grid_layer,
    positive_int,
)

__all__ = ["port_number", "register"]

HIGHEST_PORT = 65535


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 0..65535."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= port <= HIGHEST_PORT:
        raise argparse.ArgumentTypeError(f"a port lies in 0..{HIGHEST_PORT}, got {port}")
    return port


def _demo(args: argparse.Namespace) -> int:
    # Gradio is imported only when the verb runs, so `dino --help` stays fast and works without it.
    try:
        from demo.app import build_demo, check_port, launch_demo
    except ImportError as error:
        raise ValueError(f'the demo needs Gradio ({error}); install it with: pip install -e ".[demo]"') from None
    from demo.config import ANY_FREE_PORT

    if args.port != ANY_FREE_PORT:
        check_port(args.host, args.port)  # before the model loads and the gallery is indexed
    model = backbone_from_args(args)
    page = build_demo(
        args.weights,
        model=model,
        grid_layer=dense_grid_layer(model, args.grid_layer, args.patch_size),
        gallery=args.gallery,
        index=args.index,
        cache_dir=args.cache_dir,
        device=args.device,
        max_video_frames=args.max_video_frames,
        concurrency_limit=args.concurrency,
        copy_threshold=args.copy_threshold,
    )
    launch_demo(page, host=args.host, port=args.port, share=args.share)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``demo`` to the ``dino`` command."""
    from demo.config import ANY_FREE_PORT, DEFAULT_CONCURRENCY, DEFAULT_HOST, DEFAULT_MAX_VIDEO_FRAMES, DEFAULT_PORT

    parser = subparsers.add_parser(
        "demo",
        help="open the web demo: attention masks, search, copy check, video masks",
        description="Serve a local web page (Gradio) where you can see the attention masks of your own photos, "
        "search a gallery, check two images for copying and propagate a mask through a video. Everything runs "
        "offline on this machine; the sample gallery comes from photos shipped with scikit-image and "
        "scikit-learn. Open the printed URL in a browser; stop with Ctrl+C.",
    )
    server = parser.add_argument_group("server")
    server.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="address to listen on; 0.0.0.0 exposes the demo to your network (default: %(default)s, this machine only)",
    )
    server.add_argument(
        "--port",
        type=port_number,
        default=DEFAULT_PORT,
        help=f"port (default: %(default)s); {ANY_FREE_PORT} takes the first free one from {DEFAULT_PORT}",
    )
    server.add_argument(
        "--share", action="store_true", help="also publish a temporary public gradio.live link (needs internet)"
    )
    server.add_argument(
        "--concurrency",
        type=positive_int,
        default=DEFAULT_CONCURRENCY,
        help="model computations each tab runs at once over all users; others wait in the tab's queue "
        "(default: %(default)s)",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--gallery", help="folder of images to index for Search and Copy check (default: the samples)")
    data.add_argument("--index", help="an index folder written by `dino search index` to search instead")
    data.add_argument("--cache-dir", help="where sample files are written (default: ~/.cache/dino-suite/demo)")
    data.add_argument(
        "--max-video-frames",
        type=positive_int,
        default=DEFAULT_MAX_VIDEO_FRAMES,
        help="longer videos are cut to this many frames, with a notice (default: %(default)s)",
    )
    data.add_argument(
        "--copy-threshold",
        type=cosine_threshold,
        help="cosine similarity from which Copy check's index search reports a copy (the pair check decides by "
        "verified matches and shows this threshold beside the similarity; default: the copy-detection app's, "
        "calibrated for the default weights; for other weights use the max_f1 threshold of `dino copy-detect eval`)",
    )
    add_weights_arguments(parser)
    add_grid_layer_argument(
        parser, "the Attention tab's normalized cut and Video use (Search and Copy check pool layer4, as the core does)"
    )
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:1 …")
    parser.set_defaults(func=_demo)
