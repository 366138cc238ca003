#!/usr/bin/env python3
"""Check a resolved Compose file (the output of `docker compose config`) against payvault.

Run by scripts/check-compose.sh; usable alone:

    docker compose config > /tmp/resolved.yml
    python3 scripts/check_compose_env.py /tmp/resolved.yml --src src

Checks:
  1. Every environment variable set on a payvault service (image `payvault:dev`, or any service
     with `build:`) is one payvault reads. The variables payvault reads are found in the sources:
     every string literal "PAYVAULT_..." or "DATABASE_URL" under src/, plus NAME_FILE for every
     `secret_var("NAME")` (secrets can also come from the file named by NAME_FILE).
     A misspelt variable is otherwise silently ignored and payvault runs with the default.
  2. Every *_FILE variable (on every service) points under /run/secrets/ at a secret that the
     service lists in its `secrets:`.
  3. Every top-level secret with a `file:` exists and is a non-empty regular file.

Exit status: 0 when all checks pass, 1 when one fails, 2 on bad input. Needs PyYAML (Debian:
python3-yaml, installed with docker-compose).
"""

import argparse
import difflib
import os
import re
import sys

try:
    import yaml
except ImportError:  # pragma: no cover - the shell wrapper checks this first
    sys.exit("check_compose_env.py: the Python yaml module is missing (apt-get install python3-yaml)")

from payvault_vars import RUNTIME_VARS, variables_payvault_reads  # noqa: E402

PAYVAULT_IMAGE = "payvault:dev"
SECRETS_DIR = "/run/secrets/"


def fail_input(message):
    print("check_compose_env.py: " + message, file=sys.stderr)
    sys.exit(2)


def environment_of(service):
    """The service's environment as a dict (Compose allows a mapping or a list of NAME=value)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): v for k, v in env.items()}
    result = {}
    for item in env:
        name, sep, value = str(item).partition("=")
        result[name] = value if sep else None
    return result


def secret_mounts(service):
    """{mount path: secret name} for the secrets a service lists."""
    mounts = {}
    for entry in service.get("secrets") or []:
        if isinstance(entry, dict):
            source = entry.get("source")
            target = entry.get("target") or source
        else:
            source = target = str(entry)
        if source is None:
            continue
        path = target if str(target).startswith("/") else SECRETS_DIR + str(target)
        mounts[path] = source
    return mounts


def close_match(var, known):
    """The known variable `var` is most likely a misspelling of, compared without the shared
    PAYVAULT_ prefix (which would make every PAYVAULT_ name look alike)."""
    strip = lambda name: name[len("PAYVAULT_"):] if name.startswith("PAYVAULT_") else name
    by_stem = {strip(name): name for name in sorted(known)}
    match = difflib.get_close_matches(strip(var), list(by_stem), n=1, cutoff=0.8)
    return [by_stem[match[0]]] if match else []


def is_payvault(service):
    return service.get("image") == PAYVAULT_IMAGE or "build" in service


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("resolved", help="output of `docker compose config`")
    parser.add_argument("--src", default="src", help="payvault's Rust sources (default: src)")
    parser.add_argument(
        "--base-dir",
        default=None,
        help="directory relative secret `file:` paths are resolved against "
        "(default: the resolved file's directory)",
    )
    args = parser.parse_args()

    try:
        with open(args.resolved, encoding="utf-8") as f:
            compose = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        fail_input("cannot read {}: {}".format(args.resolved, e))
    if not isinstance(compose, dict) or not isinstance(compose.get("services"), dict):
        fail_input("{} has no services: is it a Compose file?".format(args.resolved))
    base_dir = args.base_dir or os.path.dirname(os.path.abspath(args.resolved))

    known = variables_payvault_reads(args.src) | RUNTIME_VARS
    services = compose["services"]
    top_secrets = compose.get("secrets") or {}
    errors = []
    unknown_vars = False
    payvault_services = []
    checked_vars = 0
    file_vars = 0

    for name in sorted(services):
        service = services[name] or {}
        env = environment_of(service)

        # 1. Only variables payvault reads.
        if is_payvault(service):
            payvault_services.append(name)
            checked_vars += len(env)
            for var in sorted(env):
                if var not in known:
                    unknown_vars = True
                    hint = close_match(var, known)
                    errors.append(
                        "service {}: {} is not a variable payvault reads{}".format(
                            name, var, " (did you mean {}?)".format(hint[0]) if hint else ""
                        )
                    )

        # 2. *_FILE variables point at a secret the service mounts.
        mounts = secret_mounts(service)
        for var in sorted(env):
            if not var.endswith("_FILE"):
                continue
            file_vars += 1
            value = env[var]
            if not value or not str(value).startswith(SECRETS_DIR):
                errors.append(
                    "service {}: {}={!r} is not under {} (pass secrets as Docker secrets)".format(
                        name, var, value, SECRETS_DIR
                    )
                )
            elif value not in mounts:
                errors.append(
                    "service {}: {}={} is not a secret the service mounts "
                    "(its `secrets:` mount: {})".format(
                        name, var, value, ", ".join(sorted(mounts)) or "none"
                    )
                )
            elif mounts[value] not in top_secrets:
                errors.append(
                    "service {}: secret {} is not defined in the top-level `secrets:`".format(
                        name, mounts[value]
                    )
                )

    # 3. Secret files exist.
    secret_files = 0
    for secret in sorted(top_secrets):
        spec = top_secrets[secret] or {}
        path = spec.get("file")
        if path is None:
            continue  # external, or from the environment: nothing on disk to check
        secret_files += 1
        if not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        if not os.path.isfile(path):
            errors.append("secret {}: file {} does not exist".format(secret, path))
        elif os.path.getsize(path) == 0:
            errors.append("secret {}: file {} is empty".format(secret, path))

    if not payvault_services:
        errors.append(
            "no payvault service found (image {} or `build:`): nothing was checked".format(
                PAYVAULT_IMAGE
            )
        )

    if errors:
        print("compose check FAILED:", file=sys.stderr)
        for error in errors:
            print("  - " + error, file=sys.stderr)
        if unknown_vars:
            print(
                "payvault would silently ignore the unknown variables: it reads only those in the "
                "README's configuration table (found in {}).".format(args.src),
                file=sys.stderr,
            )
        return 1

    print(
        "compose check OK: {} variables on payvault services ({}) are all read by payvault; "
        "{} *_FILE variables point at mounted secrets; {} secret files exist.".format(
            checked_vars, ", ".join(payvault_services), file_vars, secret_files
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
