"""One streamed chat completion through the Backhaul Worker with the official
OpenAI Python client; prints the answer as it arrives, then the Worker's
routing headers. Used by scripts/demo.sh.

usage: demo-client.py BASE_URL MODEL LAT,LON PROMPT [MAX_TOKENS]
"""

import sys
import time

from openai import OpenAI


def main() -> int:
    base_url, model, location, prompt = sys.argv[1:5]
    max_tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 96
    client = OpenAI(base_url=base_url, api_key="demo", max_retries=0, timeout=120)
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_headers={"x-backhaul-client-location": location},
    )
    headers = raw.headers
    print(
        f"  served by region {headers.get('x-backhaul-region')} "
        f"(tier {headers.get('x-backhaul-tier')}, attempts {headers.get('x-backhaul-attempts')}, "
        f"reason {headers.get('x-backhaul-reason')})",
        flush=True,
    )
    print("  answer: ", end="", flush=True)
    usage = None
    first = None
    for chunk in raw.parse():
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                if first is None:
                    first = time.monotonic() - started
                print(choice.delta.content, end="", flush=True)
    print()
    total = time.monotonic() - started
    if usage is not None:
        print(
            f"  usage: {usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
            f"first token after {first or 0:.2f}s, done in {total:.2f}s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
