"""``privrad data …``: fetch a public dataset, simulate a download, describe a dataset, list them.

    privrad data fetch openi                       # → data/openi, checksums verified
    privrad data simulate mimic-cxr --out data/simulated/mimic-cxr-4k --n 4000 --seed 0
    privrad data simulate ct-rate --out data/simulated/ct-rate-2k --n 2000
    privrad data describe openi ../shared/data/openi --dataset-option test_list=true --tokenizer minilm-l6
    privrad data list
"""

from __future__ import annotations

import warnings


def _fetch(args) -> int:
    from privrad.data.fetch import fetch

    fetch(args.name, args.out, mirror=args.mirror, overwrite=args.overwrite)
    return 0


def _simulate(args) -> int:
    from privrad.data.simulate import simulate

    out = simulate(args.kind, args.out, n=args.n, seed=args.seed, label_noise=args.label_noise, overwrite=args.overwrite)
    print(f"simulated {args.kind} in {out}")
    return 0


def _describe(args) -> int:
    from privrad.data import load_dataset
    from privrad.data.common import DataWarning
    from privrad.data.describe import describe, format_description
    from privrad.io import atomic_write_json
    from privrad.profiles import parse_assignments

    with warnings.catch_warnings():  # the loader's summary line is printed below, once
        warnings.simplefilter("ignore", DataWarning)
        ds = load_dataset(args.dataset, args.path, **parse_assignments(args.dataset_options, flag="--dataset-option"))
    tok = None if args.tokenizer in (None, "", "none") else args.tokenizer
    d = describe(ds, tokenizer=tok)
    print(format_description(d))
    if args.json:
        doc = {k: (v.reset_index().to_dict(orient="records") if hasattr(v, "to_dict") and k != "dropped" else v)
               for k, v in d.items() if k != "length_values"}
        atomic_write_json(args.json, doc)
    return 0


def _list(args) -> int:
    from privrad.data import get_dataset_spec, known_datasets

    for name in known_datasets():
        spec = get_dataset_spec(name)
        print(f"{name:22s} {'credentialed' if spec.credentialed else 'public':12s} {spec.description}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("data", help="fetch, simulate, describe and list datasets")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    f = sub.add_parser("fetch", help="download a public dataset (openi) from its public sources and verify its checksums")
    f.add_argument("name", choices=["openi"])
    f.add_argument("--out", default=None, help="destination folder (default: data/<name>)")
    f.add_argument("--mirror", default=None, help="read the files from this base URL instead, e.g. file:///srv/mirror/openi")
    f.add_argument("--overwrite", action="store_true", help="replace an existing folder whose files do not verify")
    f.set_defaults(func=_fetch)

    s = sub.add_parser("simulate", help="write a simulated, layout-exact MIMIC-CXR or CT-RATE download")
    s.add_argument("kind", choices=["mimic-cxr", "ct-rate"])
    s.add_argument("--out", required=True, help="output folder, e.g. data/simulated/<kind>-4k (data/simulated/<kind> is where the default profile simulates its own data)")
    s.add_argument("--n", type=int, default=None, help="number of reports (default: 4000 MIMIC-CXR, 2000 CT-RATE)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--label-noise", type=float, default=0.05, dest="label_noise",
                   help="fraction of each label's positives written wrong (prevalence kept); default 0.05")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    s.set_defaults(func=_simulate)

    d = sub.add_parser("describe", help="counts, prevalence and lengths of a dataset (never its text)")
    d.add_argument("dataset", help="registry name, e.g. mimic-cxr, ct-rate, openi, csv, simulated-mimic-cxr")
    d.add_argument("path", help="the download folder (or the file, for csv)")
    d.add_argument("-o", "--dataset-option", action="append", dest="dataset_options", metavar="KEY=VALUE",
                   help="one entry of the loader's dataset_options, repeatable (e.g. uncertain=positive, max_reports=1000, text_column=report)")
    d.add_argument("--tokenizer", default="minilm-l6", help="tokenizer for token lengths ('none' to skip); default minilm-l6")
    d.add_argument("--json", default=None, help="also write the tables to this JSON file")
    d.set_defaults(func=_describe)

    ls = sub.add_parser("list", help="the registered datasets")
    ls.set_defaults(func=_list)
