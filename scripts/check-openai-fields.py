#!/usr/bin/env python3
"""The OpenAI field audit's drift check, Python SDK side.

Every request field of chat completions and legacy completions in the
installed `openai` package (the TypedDicts the SDK sends,
`openai.types.chat.completion_create_params` and
`openai.types.completion_create_params`, streaming and not) must have a row
in docs/openai-compatibility.md, and the doc must name the package's version
(a new version is a new audit). `--json-out FILE` also writes the fields, for
the Node side's check of rows neither SDK sends
(worker/scripts/check-openai-fields.mjs). Run it with the interpreter that
has the pinned package: scripts/check-openai-fields.sh does.
"""

import argparse
import json
import pathlib
import re
import sys

import openai
from openai.types import completion_create_params as legacy
from openai.types.chat import completion_create_params as chat

DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "openai-compatibility.md"


def keys(*typed_dicts):
    out = set()
    for td in typed_dicts:
        out |= set(td.__required_keys__) | set(td.__optional_keys__)
    return out


def doc_fields(doc):
    """The first-column field names of the tables between `<!-- fields: API -->` and `<!-- /fields -->`."""
    out = {"chat": set(), "completions": set()}
    for api, body in re.findall(r"<!-- fields: (chat|completions) -->(.*?)<!-- /fields -->", doc, re.S):
        for line in body.splitlines():
            m = re.match(r"^\|\s*`([a-z_]+)`\s*\|", line)
            if m:
                out[api].add(m.group(1))
    if not out["chat"] or not out["completions"]:
        sys.exit(f"{DOC}: the field tables (<!-- fields: chat|completions -->) are missing or empty")
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json-out", help="also write the SDK's fields here, as JSON")
    args = parser.parse_args()
    sdk = {
        "chat": keys(chat.CompletionCreateParamsNonStreaming, chat.CompletionCreateParamsStreaming),
        "completions": keys(legacy.CompletionCreateParamsNonStreaming, legacy.CompletionCreateParamsStreaming),
    }
    if args.json_out:
        pathlib.Path(args.json_out).write_text(
            json.dumps({"version": openai.__version__, **{k: sorted(v) for k, v in sdk.items()}})
        )
    doc = DOC.read_text()
    rows = doc_fields(doc)
    problems = []
    if f"openai (Python) {openai.__version__}" not in doc:
        problems.append(
            f"the doc does not say it was audited against openai (Python) {openai.__version__}: "
            "audit the new version's fields, then update that line"
        )
    for api in ("chat", "completions"):
        for field in sorted(sdk[api] - rows[api]):
            problems.append(f"{api}: the Python SDK sends '{field}', which has no row in the doc")
    if problems:
        sys.exit(f"{DOC}:\n  " + "\n  ".join(problems))
    print(
        f"openai (Python) {openai.__version__}: {len(sdk['chat'])} chat and "
        f"{len(sdk['completions'])} completions fields, each in the doc"
    )


if __name__ == "__main__":
    main()
