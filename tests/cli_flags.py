"""Command-line flags from option values, as the architecture tests give them to umx-train."""


def flags(options: dict) -> list[str]:
    """`{"seq_dur": 1.0, "ema": True, "targets": [...]}` → `--seq-dur 1.0 --ema --targets …` (False: `--no-…`)."""
    args: list[str] = []
    for k, v in options.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            args += [flag if v else f"--no-{flag[2:]}"]
        else:
            args += [flag, *map(str, v)] if isinstance(v, (list, tuple)) else [flag, str(v)]
    return args
