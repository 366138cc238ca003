#!/usr/bin/env python3
"""Check the Dockerfile without a Docker engine (our CI machines have none).

    python3 scripts/check_dockerfile.py --bin target/debug/payvault

Parses it with dockerfile-parse (PyPI) and checks what `docker build` cannot tell us here:
  1. it is multi-stage, and the build stage builds offline (SQLX_OFFLINE=true) from files that
     exist in the repository and are not excluded by .dockerignore;
  2. the final stage runs as a non-root user, has a HEALTHCHECK, and sets no variable payvault
     does not read (the same rule as the Compose check);
  3. every exec-form command (ENTRYPOINT + CMD, HEALTHCHECK) is a payvault subcommand that
     exists: the built binary is run with the same arguments and `--help`.

Exit status: 0 when all checks pass, 1 when one fails.
"""

import argparse
import json
import os
import subprocess
import sys

from dockerfile_parse import DockerfileParser

from payvault_vars import RUNTIME_VARS, variables_payvault_reads

BINARY = "/usr/local/bin/payvault"


def stages(structure):
    """Instructions grouped by stage (each FROM starts one)."""
    result = []
    for instr in structure:
        if instr["instruction"] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def exec_form(value):
    """The argument list of an exec-form value such as ["a", "b"], or None for shell form."""
    try:
        args = json.loads(value)
    except ValueError:
        return None
    return args if isinstance(args, list) else None


def ignored(path, patterns):
    """Whether .dockerignore's simple patterns (`dir/`, `name`, `*.ext`) exclude `path`."""
    head = path.strip("/").split("/")[0]
    for pattern in patterns:
        p = pattern.rstrip("/")
        if p.startswith("*.") and path.endswith(p[1:]):
            return True
        if p == head or p == path.strip("/"):
            return True
    return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dockerfile", default="Dockerfile")
    parser.add_argument("--src", default="src")
    parser.add_argument("--bin", required=True, help="a built payvault binary")
    args = parser.parse_args()

    root = os.path.dirname(os.path.abspath(args.dockerfile))
    errors = []
    with open(args.dockerfile, "rb") as f:
        all_stages = stages(DockerfileParser(fileobj=f).structure)
    if len(all_stages) < 2:
        errors.append("not multi-stage: the build toolchain would ship in the image")
    build, final = all_stages[0], all_stages[-1]

    def values(stage, name):
        return [i["value"] for i in stage if i["instruction"] == name]

    with open(os.path.join(root, ".dockerignore"), encoding="utf-8") as f:
        ignore = [l.strip() for l in f if l.strip() and not l.startswith("#")]
    for copy in values(build, "COPY"):
        if copy.startswith("--from"):
            continue
        for source in copy.split()[:-1]:
            if not os.path.exists(os.path.join(root, source)):
                errors.append("COPY {}: no such file in the repository".format(source))
            elif ignored(source, ignore):
                errors.append("COPY {}: excluded by .dockerignore".format(source))
    offline = any("SQLX_OFFLINE=true" in v for v in values(build, "ENV"))
    if not offline:
        errors.append("the build stage does not set SQLX_OFFLINE=true: it would need a database")
    for needed in (".sqlx", "migrations", "src", "Cargo.lock", "vendor"):
        if not any(needed in v for v in values(build, "COPY")):
            errors.append("the build stage does not copy {}".format(needed))

    users = values(final, "USER")
    if not users or users[-1].split(":")[0] in ("root", "0"):
        errors.append("the image runs as root: set USER to an unprivileged account")
    if not values(final, "HEALTHCHECK"):
        errors.append("the image has no HEALTHCHECK")

    known = variables_payvault_reads(args.src) | RUNTIME_VARS
    for env in values(final, "ENV"):
        for item in env.split():
            name = item.partition("=")[0]
            if name not in known:
                errors.append("ENV {} is not a variable payvault reads".format(name))

    commands = []
    entrypoint = (values(final, "ENTRYPOINT") or [None])[-1]
    cmd = (values(final, "CMD") or [None])[-1]
    ep_args = exec_form(entrypoint) if entrypoint else None
    if ep_args != [BINARY]:
        errors.append("ENTRYPOINT should be [\"{}\"], is {}".format(BINARY, entrypoint))
    if cmd:
        commands.append(("CMD", exec_form(cmd)))
    for check in values(final, "HEALTHCHECK"):
        _, _, rest = check.partition("CMD")
        argv = exec_form(rest.strip())
        commands.append(("HEALTHCHECK", argv[1:] if argv and argv[0] == BINARY else None))
    for what, argv in commands:
        if argv is None:
            errors.append("{} is not in exec form running {}".format(what, BINARY))
            continue
        run = subprocess.run([args.bin] + argv + ["--help"], capture_output=True, text=True)
        if run.returncode != 0:
            errors.append("{} runs `payvault {}`, which fails: {}".format(
                what, " ".join(argv), run.stderr.strip().splitlines()[:1]))

    if errors:
        print("Dockerfile check FAILED:")
        for e in errors:
            print("  - " + e)
        return 1
    print("Dockerfile check OK: {} stages; non-root; healthcheck; {} payvault commands exist".format(
        len(all_stages), len(commands)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
