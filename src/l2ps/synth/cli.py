"""``l2ps synth``: write synthetic Level-1 products with known truth.

    l2ps synth landsat OUTDIR --sensor LND08 --size 400 --form tar --seed 1
    l2ps synth sentinel2 OUTDIR --sensor SEN2A --size 600 --form zip --baseline 04.00
    l2ps synth sentinel2 OUTDIR --size 600 --fine-texture 1 --truth-10m --shift-m 12,-7
    l2ps synth landsat OUTDIR --size 400 --brdf global --aux
"""
from __future__ import annotations

import argparse
import sys


def _size(text: str):
    if text == "full":
        return "full"
    parts = text.lower().replace(",", "x").split("x")
    try:
        vals = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N, NxM or full") from None
    if len(vals) == 1:
        vals = vals * 2
    if len(vals) != 2 or min(vals) <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected N, NxM or full")
    return tuple(vals)


def _shift(text: str):
    parts = text.replace(" ", "").split(",")
    try:
        vals = tuple(float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"shift {text!r}: expected EAST,NORTH in metres") from None
    if len(vals) != 2:
        raise argparse.ArgumentTypeError(f"shift {text!r}: expected EAST,NORTH in metres")
    return vals


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``synth`` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser("synth", help="write synthetic Level-1 products with known truth",
                              description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("kind", choices=("landsat", "sentinel2"))
    p.add_argument("out_dir")
    p.add_argument("--sensor", default=None,
                   help="LND04/05/07/08/09 or SEN2A/B/C (default LND08 / SEN2A)")
    p.add_argument("--size", type=_size, default=None,
                   help="pixels: N, NxM (Landsat, 30 m) or N (Sentinel-2, 10 m, divisible "
                        "by 6), or 'full' (default 400 / 600)")
    p.add_argument("--form", default=None,
                   help="landsat: folder|tar|tar.gz; sentinel2: safe|zip")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--date", default="2021-07-15", help="acquisition date YYYY-MM-DD")
    p.add_argument("--collection", type=int, default=None, help="Landsat collection 1 or 2")
    p.add_argument("--path", type=int, default=193, help="Landsat WRS-2 path")
    p.add_argument("--row", type=int, default=24, help="Landsat WRS-2 row")
    p.add_argument("--tile", default="T32UPC", help="Sentinel-2 MGRS tile")
    p.add_argument("--baseline", default="04.00", help="Sentinel-2 processing baseline")
    p.add_argument("--no-clouds", action="store_true")
    p.add_argument("--cloud-fraction", type=float, default=0.15)
    p.add_argument("--aod", type=float, default=0.15, help="AOD at 550 nm")
    p.add_argument("--water-vapor", type=float, default=1.5, help="g/cm2")
    p.add_argument("--relief", type=float, default=1.0, help="terrain relief scale (0 = flat)")
    p.add_argument("--fine-texture", type=float, default=0.0,
                   help="sentinel2: amplitude of the sub-20 m surface texture (0 = off)")
    p.add_argument("--truth-10m", action="store_true",
                   help="sentinel2: also write the 20/60 m bands' truth rendered at 10 m")
    p.add_argument("--shift-m", type=_shift, default=None, metavar="EAST,NORTH",
                   help="ground content displaced by (east, north) metres relative to the "
                        "pixel grid (a misregistered product; truth.json content_shift_m)")
    p.add_argument("--brdf", choices=("global", "cover"), default=None,
                   help="kernel-driven BRDF surface (RossThick-LiSparseR): global = Roy et al. "
                        "2017 ratios for every cover, cover = per-cover ratios; truth gets "
                        "nbar_* layers (default: isotropic surface)")
    p.add_argument("--wvp-db", action="store_true",
                   help="write a water vapour database (WVP_YYYY-MM-DD.txt, WVP_0000-MM-00.txt) "
                        "into <truth>/wvp")
    p.add_argument("--aod-files", action="store_true",
                   help="write the AOD look-up file AOD_DDD.txt into <truth>/aod")
    p.add_argument("--dem-variants", action="store_true",
                   help="write the DEM in EPSG:4326, in the neighbouring UTM zone at 90 m and "
                        "with nodata holes into <truth>/dem")
    p.add_argument("--aux", action="store_true",
                   help="all of --wvp-db, --aod-files, --dem-variants")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Handler of ``l2ps synth``: writes the product and prints its path and truth folder."""
    from . import make_landsat, make_sentinel2
    common = dict(seed=args.seed, date=args.date, clouds=not args.no_clouds,
                  cloud_fraction=args.cloud_fraction, aod=args.aod,
                  water_vapor=args.water_vapor, relief=args.relief, brdf=args.brdf,
                  wvp_db=args.wvp_db or args.aux, aod_files=args.aod_files or args.aux,
                  dem_variants=args.dem_variants or args.aux)
    if args.size is not None:
        common["size"] = args.size
    if args.kind == "landsat" and (args.fine_texture or args.truth_10m):
        print("l2ps synth: --fine-texture and --truth-10m apply to sentinel2 only",
              file=sys.stderr)
        return 2
    if args.shift_m is not None:
        from .coreg import make_shifted_landsat, make_shifted_sentinel2
        shift = args.shift_m
        make_landsat = lambda out, **kw: make_shifted_landsat(out, shift, **kw)  # noqa: E731
        make_sentinel2 = lambda out, **kw: make_shifted_sentinel2(out, shift, **kw)  # noqa: E731
    try:
        if args.kind == "landsat":
            kw = dict(sensor=args.sensor or "LND08", path=args.path, row=args.row)
            collection = args.collection or (1 if args.form == "tar.gz" else 2)
            kw.update(collection=collection, form=args.form or ("tar.gz" if collection == 1
                                                                else "folder"))
            prod = make_landsat(args.out_dir, **kw, **common)
        else:
            prod = make_sentinel2(args.out_dir, sensor=args.sensor or "SEN2A",
                                  form=args.form or "safe", baseline=args.baseline,
                                  tile=args.tile, fine_texture=args.fine_texture,
                                  truth_10m=args.truth_10m, **common)
    except (ValueError, KeyError) as e:
        print(f"l2ps synth: {e}", file=sys.stderr)
        return 2
    print(prod.path)
    print(f"truth: {prod.truth_dir}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="l2ps-synth")
    sub = parser.add_subparsers(dest="command", required=True)
    add_parser(sub)
    args = parser.parse_args(["synth", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
