"""Run a Python Pulumi program through the real CLI, with the Python SDK as its language host.

    python -m tests.pulumi.inline up|preview|destroy --dir PROJECT --stack NAME [--program FILE]
        [--expect-no-changes] [--cli-root ROOT]

The Pulumi CLI runs a Python program through the ``pulumi-language-python`` plugin, which the Go
module proxy does not serve, so this drives the same operations through the Automation API's
inline programs: the CLI (``pulumi up --client=...``) asks the SDK's own language runtime server,
in this process, to run ``FILE`` (default ``PROJECT/__main__.py``) as ``__main__``. Everything
else, the engine, the providers, the state and the secrets, is the real thing. The project's own
``Pulumi.yaml`` and ``Pulumi.<stack>.yaml`` in ``PROJECT`` are used as they are; the stack must
exist (``pulumi stack init``). The environment (``PULUMI_HOME``, backend, passphrase) is the
caller's. Prints the engine's output; exits 0 on success, 1 with the engine's error otherwise.
Run in its own process: a program run sets the SDK's process-wide state.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

from pulumi import automation as auto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.pulumi.inline")
    parser.add_argument("operation", choices=("up", "preview", "destroy"))
    parser.add_argument("--dir", type=Path, required=True, help="the project folder (Pulumi.yaml)")
    parser.add_argument("--stack", required=True)
    parser.add_argument("--program", type=Path, help="default: <dir>/__main__.py")
    parser.add_argument("--expect-no-changes", action="store_true")
    parser.add_argument("--cli-root", type=Path, help="folder whose bin/pulumi runs (default PATH)")
    args = parser.parse_args(argv)
    project = args.dir.resolve()
    program_file = (args.program or project / "__main__.py").resolve()

    def program() -> None:
        sys.path.insert(0, str(program_file.parent))
        try:
            runpy.run_path(str(program_file), run_name="__main__")
        finally:
            sys.path.remove(str(program_file.parent))

    command = auto.PulumiCommand(root=str(args.cli_root)) if args.cli_root else None
    os.chdir(project)
    workspace = auto.LocalWorkspace(work_dir=str(project), program=program, pulumi_command=command)
    stack = auto.Stack.select(args.stack, workspace)

    def out(line: str) -> None:
        print(line, flush=True)

    try:
        if args.operation == "up":
            stack.up(on_output=out, expect_no_changes=args.expect_no_changes or None)
        elif args.operation == "preview":
            stack.preview(on_output=out, expect_no_changes=args.expect_no_changes or None)
        else:
            stack.destroy(on_output=out)
    except auto.CommandError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
