"""`umxt COMMAND …`: every umx command line as a subcommand of one click group (`umxt prep`,
`umxt train`, …); the hyphenated scripts (`umx-prep`, `umx-train`, …) run the same commands.
Subcommands are imported when used, so `umxt --help` does not load torch.

The group is not called `umx`: the openunmix package installs a `umx` script (its separator), and
whichever package was installed last would own the name."""

from __future__ import annotations

import importlib
import sys

import click

from .cli_util import CONTEXT_SETTINGS, run_command

COMMANDS = {  # name: (module, one line for `umx --help`)
    "synth": ("umx.synth", "write a deterministic synthetic music dataset"),
    "prep": ("umx.prep.cli", "turn a dataset folder into a shard set"),
    "train": ("umx.train.cli", "train an Open-Unmix target model"),
    "separate": ("umx.separate", "separate audio files with a model directory"),
    "eval": ("umx.evaluate_cli", "separate a split and score it with museval"),
    "plot": ("umx.plot", "draw the loss curves of a training run"),
    "bench": ("umx.bench_cli", "measure a training run: is it data-bound?"),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).cli

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


GROUP = "umxt"  # the console script's name (setup.py)

cli = LazyGroup(GROUP, context_settings=CONTEXT_SETTINGS,
                help="Open-Unmix training, data first: `umxt COMMAND --help` for each command.",
                epilog="\b\nExample:\n  umxt synth trackfolder_fix /tmp/data && umxt prep trackfolder_fix /tmp/data "
                       "--out /tmp/shards\n  umxt train --shards /tmp/shards --epochs 1")


def main(argv: list[str] | None = None) -> int:
    return run_command(cli, argv, GROUP)


if __name__ == "__main__":
    sys.exit(main())
