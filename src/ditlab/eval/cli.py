"""`ditlab eval`: score a samples `.npz` against a reference and print one JSON line with every metric.

    ditlab eval --samples samples.npz --ref digits:test
    ditlab eval --samples samples.npz --ref fashion-mnist:test --features effnet-lite0 classifier:fashion-mnist
    ditlab eval --samples samples.npz --ref VIRTUAL_imagenet256_labeled.npz --features inception:/w/inception-2015-12-05.pt
    ditlab eval --ref fashion-mnist:test          # only compute and cache the reference statistics and floors
    ditlab eval --shapes --samples samples.npz    # read shapes prompts' objects back (npz: arr_0 + prompts)
    torchrun --standalone --nproc_per_node 8 -m ditlab eval --samples samples.npz --ref ...  # features split

Under torchrun each process extracts the features of its share of the samples, the reference and the floor,
and the statistics are merged (`ditlab.eval.distributed`): the result is one process's, printed by rank 0.

The JSON line carries the sample count, the reference, the extractor settings and the data's own floor, so a
number is never quoted without the protocol that produced it. Warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from ditlab.cli_args import UsageError, add_device_argument, add_list_argument, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--samples", metavar="NPZ", help="ADM-style .npz: arr_0 uint8 (N, H, W, C) [+ labels (N,)]"
    )
    parser.add_argument(
        "--ref",
        help="reference: digits:test, fashion-mnist[:DIR]:test, an image folder, or an .npz of images (arr_0) "
        "or statistics (mu, sigma). The split defaults to test. Required unless --shapes.",
    )
    parser.add_argument(
        "--shapes",
        action="store_true",
        help="grade the samples against their `prompts` with the shapes evaluator (colour, shape, relation)",
    )
    add_list_argument(
        parser,
        "--features",
        metavar="NAME",
        help="feature extractors: effnet-lite0[:RES] | inception:PATH | classifier:DATASET (default: "
        "effnet-lite0, plus classifier:<dataset> for digits / Fashion-MNIST references)",
    )
    parser.add_argument(
        "--resize-ref",
        action="store_true",
        help="score samples whose size or channels differ from the reference's (it is resized; default: refuse)",
    )
    parser.add_argument(
        "--k", type=positive_int, default=3, help="nearest neighbours of the precision/recall manifolds"
    )
    parser.add_argument(
        "--no-floor", action="store_true", help="skip the train-vs-test floor (the data's own FD)"
    )
    add_list_argument(
        parser,
        "--image-size",
        item=positive_int,
        metavar="PX",
        help="side (or H W), in pixels, to load the reference at without --samples (default: its own size)",
    )
    add_device_argument(parser, "device of the feature extractors: ")
    parser.add_argument(
        "--cache-dir", metavar="DIR", help="cache folder (default: $DITLAB_CACHE or ~/.cache/ditlab)"
    )
    parser.add_argument("--out", metavar="FILE", help="also write the JSON result to this file")


def _reference_only(args, names, dist) -> dict:
    """Statistics and floor of the reference alone (fills the caches for later runs)."""
    from ditlab.data import size_pair
    from ditlab.eval.distributed import rank_zero_first
    from ditlab.eval.features import get_feature_extractor
    from ditlab.eval.reference import floor_fd, parse_reference, reference_stats

    spec = parse_reference(args.ref)
    if args.image_size and len(args.image_size) > 2:
        raise UsageError(f"--image-size takes a side or H W, got {len(args.image_size)} numbers")
    size = (
        size_pair(args.image_size[0] if len(args.image_size) == 1 else tuple(args.image_size))
        if args.image_size
        else None
    )
    result = {"ref": str(spec), "image_size": list(size) if size else None, "metrics": {}}
    for name in names:
        extractor = rank_zero_first(
            lambda name=name: get_feature_extractor(name, device=args.device, cache_dir=args.cache_dir), dist
        )
        ref = reference_stats(spec, extractor, image_size=size, cache_dir=args.cache_dir, dist=dist)
        entry = {"metric": extractor.metric, "n_ref": ref.n, "stats_from_file": ref.stats_from_file}
        entry.update(extractor.settings())
        if not args.no_floor:
            entry["floor"] = floor_fd(spec, extractor, image_size=size, cache_dir=args.cache_dir, dist=dist)
        result["metrics"][extractor.name] = entry
    return result


def run(args: argparse.Namespace) -> int:
    from ditlab import distributed as D
    from ditlab.eval.evaluate import default_features
    from ditlab.runtime import resolve_device

    # bad input raises (ValueError family): `ditlab.cli` prints it as one error line, exit code 2
    if args.ref is None and not args.shapes:
        raise ValueError("give --ref (the reference to score against), or --shapes with --samples")
    names = (args.features or default_features(args.ref)) if args.ref else ()
    args.device = resolve_device(args.device)  # the same check as train/sample: cuda without a GPU
    dist = D.init_distributed(args.device)  # under torchrun: each process extracts its share of features
    args.device = D.local_device(args.device, dist)
    result = _result(args, names, dist)
    D.shutdown(dist)
    if not dist.is_main:  # every rank holds the same result; rank 0 reports it
        return 0
    for message in result["warnings"]:
        print(f"ditlab eval: warning: {message}", file=sys.stderr)
    line = json.dumps(result)
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    return 0


def _result(args, names, dist) -> dict:
    from ditlab.data import load_npz
    from ditlab.eval.evaluate import evaluate
    from ditlab.eval.shapes import shapes_report

    if args.ref is None:  # --shapes alone
        result = {"samples": str(args.samples), "warnings": []}
    elif args.samples is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = _reference_only(args, names, dist)
        result["warnings"] = list(dict.fromkeys(str(w.message) for w in caught))
    else:
        images, labels = load_npz(args.samples, mmap=dist.enabled)  # a rank reads the pages of its share
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # evaluate() returns its warnings in the result
            result = evaluate(
                images,
                labels,
                ref=args.ref,
                features=names,
                k=args.k,
                floor=not args.no_floor,
                device=args.device,
                cache_dir=args.cache_dir,
                resize_ref=args.resize_ref,
                dist=dist,
            )
        result = {"samples": str(args.samples), **result}
    if args.shapes and dist.is_main:  # a CPU pass over the samples, reported by rank 0 alone
        result["shapes"] = shapes_report(args.samples)
    return result
