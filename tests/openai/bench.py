"""Benchmark of `gemma-chat serve` through the openai client (docs/benchmarks.md, "API server"):
TTFT of each turn of a 10-turn conversation replayed through the API (the client resends the
whole history every turn), and aggregate decode tokens/s with 1 and with 4 concurrent clients.

usage: python bench.py --bin target/release/gemma-chat --model tests/fixtures/C/model
"""

import argparse
import json
import subprocess
import sys
import threading
import time

from openai import OpenAI

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from check import free_port, wait_until_served  # noqa: E402

FILLER = ("The quick brown fox jumps over the lazy dog while the cat watches from the old "
          "stone wall, and the farmer counts his sheep one by one before the evening rain. ")


def ttft_and_tokens(client, model, messages, max_tokens):
    start = time.perf_counter()
    first, text, tokens = None, [], 0
    for chunk in client.chat.completions.create(
            model=model, messages=messages, temperature=0, max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter() - start
            text.append(chunk.choices[0].delta.content)
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return first, "".join(text), tokens, time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--turns", type=int, default=10)
    p.add_argument("--turn-words", type=int, default=4, help="filler sentences per user turn")
    args = p.parse_args()
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen([args.bin, "serve", "--model", args.model, "--port", str(port)],
                              stderr=subprocess.DEVNULL)
    try:
        wait_until_served(url, server)
        client = OpenAI(base_url=url, api_key="x")
        messages, ttfts = [], []
        for turn in range(args.turns):
            messages.append({"role": "user", "content": f"Turn {turn}. " + FILLER * args.turn_words})
            first, text, _, _ = ttft_and_tokens(client, args.model, messages, 8)
            ttfts.append(first)
            messages.append({"role": "assistant", "content": text})
        # The last turn again from a cold cache (another conversation ran in between): what
        # turn 10 would cost if the server re-ran the whole history.
        last_turn = messages[:-1]
        ttft_and_tokens(client, args.model, [{"role": "user", "content": "Something else."}], 1)
        cold = ttft_and_tokens(client, args.model, last_turn, 8)[0]
        rates = {}
        for clients in (1, 4):
            results = []

            def run(i):
                convo = [{"role": "user", "content": f"Client {i}: " + FILLER}]
                results.append(ttft_and_tokens(client, args.model, convo, 64)[2])

            start = time.perf_counter()
            threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            rates[clients] = sum(results) / (time.perf_counter() - start)
        print(json.dumps({
            "ttft_ms": [round(t * 1e3, 2) for t in ttfts],
            "ttft_turn10_over_turn1": round(ttfts[-1] / ttfts[0], 3),
            "ttft_turn10_cold_ms": round(cold * 1e3, 2),
            "ttft_turn10_reused_over_cold": round(ttfts[-1] / cold, 3),
            "tok_s_1_client": round(rates[1], 1),
            "tok_s_4_clients": round(rates[4], 1),
            "ratio_4_over_1": round(rates[4] / rates[1], 3),
        }))
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main()
