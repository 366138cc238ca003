"""The environment variables payvault reads, found in its Rust sources: every string literal
"PAYVAULT_..." or "DATABASE_URL" under src/, plus NAME_FILE for every `secret_var("NAME")`
(secrets can also come from the file named by NAME_FILE). Shared by the Compose and Dockerfile
checks, so both judge variables by the same rule.
"""

import os
import re
import sys

# String literals naming a variable payvault reads, and secrets readable through NAME_FILE.
VAR_LITERAL = re.compile(r'"(PAYVAULT_[A-Z0-9_]+|DATABASE_URL)"')
SECRET_VAR = re.compile(r'secret_var\(\s*"([A-Z0-9_]+)"\s*\)')

# Read by the Rust standard library / anyhow rather than by payvault's own code.
RUNTIME_VARS = {"RUST_BACKTRACE", "RUST_LIB_BACKTRACE"}


def fail_input(message):
    print("payvault_vars: " + message, file=sys.stderr)
    sys.exit(2)


def variables_payvault_reads(src_dir):
    """Variable names read by payvault, from the Rust sources under src_dir."""
    names = set()
    files = 0
    for root, _dirs, filenames in os.walk(src_dir):
        for filename in filenames:
            if not filename.endswith(".rs"):
                continue
            files += 1
            with open(os.path.join(root, filename), encoding="utf-8") as f:
                text = f.read()
            names.update(VAR_LITERAL.findall(text))
            names.update(name + "_FILE" for name in SECRET_VAR.findall(text))
    if files == 0:
        fail_input("no .rs files under {}".format(src_dir))
    if "DATABASE_URL_FILE" not in names:
        # A sanity check of the scan itself: if this is missing, the patterns above went stale.
        fail_input(
            "scanning {} found no secret_var(\"DATABASE_URL\"): update the patterns in "
            "this script to match how payvault reads its configuration".format(src_dir)
        )
    return names
