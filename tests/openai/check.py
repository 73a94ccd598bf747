"""`gemma-chat serve` through the official `openai` client and curl: every answer at
temperature 0 must equal `gemma-chat generate --json` on the same conversation and files."""

import argparse
import base64
import json
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from pathlib import Path

from openai import OpenAI

MAX_TOKENS = 16
TRANSCRIBE = "Transcribe this audio exactly, word for word. Reply with the transcription only."


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_served(url, server, seconds=120):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"gemma-chat serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError("the server did not come up")


def cli_reply(args, *extra):
    """The reply text of `gemma-chat generate --json` (its last stdout line)."""
    out = subprocess.run(
        [args.bin, "generate", "--model", args.model, "--temperature", "0",
         "--max-new-tokens", str(MAX_TOKENS), "--json", *extra],
        check=True, capture_output=True, text=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["text"]


def b64(path):
    return base64.b64encode(Path(path).read_bytes()).decode()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--media", required=True)
    p.add_argument("--transcript", required=True)
    args = p.parse_args()
    media = Path(args.media)
    image, audio = media / "image.png", media / "audio_16k_mono.wav"

    port = free_port()
    url = f"http://127.0.0.1:{port}/v1"
    server = subprocess.Popen(
        [args.bin, "serve", "--model", args.model, "--port", str(port)],
        stderr=subprocess.PIPE, text=True,
    )
    passed, failed, transcript = 0, 0, ["# openai client transcript (fixture C)", ""]

    def check(name, fn):
        nonlocal passed, failed
        try:
            fn()
            passed += 1
            print(f"ok   {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}")
            traceback.print_exc()

    try:
        wait_until_served(url, server)
        client = OpenAI(base_url=url, api_key="not-needed")
        model = args.model
        conversation = [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello world! Tell me about the quick brown fox."},
        ]
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(conversation, f)
        expected_text = cli_reply(args, "--messages", f.name)

        def models_list():
            ids = [m.id for m in client.models.list()]
            assert ids == [model], ids

        def completion():
            r = client.chat.completions.create(
                model=model, messages=conversation, temperature=0, max_tokens=MAX_TOKENS)
            assert r.choices[0].message.content == expected_text, (r.choices[0].message.content, expected_text)
            assert r.usage.completion_tokens > 0
            transcript.extend(["## non-streamed text", "", repr(r.choices[0].message.content), ""])

        def streamed():
            pieces, usage = [], None
            for chunk in client.chat.completions.create(
                    model=model, messages=conversation, temperature=0, max_tokens=MAX_TOKENS,
                    stream=True, stream_options={"include_usage": True}):
                if chunk.choices and chunk.choices[0].delta.content:
                    pieces.append(chunk.choices[0].delta.content)
                if chunk.usage:
                    usage = chunk.usage
            assert "".join(pieces) == expected_text, ("".join(pieces), expected_text)
            assert usage is not None and usage.total_tokens > 0
            transcript.extend(["## streamed text (chunks)", "", repr(pieces), ""])

        def image_request():
            want = cli_reply(args, "--prompt", "Describe the image.", "--image", str(image))
            r = client.chat.completions.create(model=model, temperature=0, max_tokens=MAX_TOKENS, messages=[
                {"role": "user", "content": [
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(image)}},
                    {"type": "text", "text": "Describe the image."}]}])
            assert r.choices[0].message.content == want, (r.choices[0].message.content, want)
            transcript.extend(["## image answer", "", repr(want), ""])

        def audio_request():
            want = cli_reply(args, "--prompt", "What do you hear?", "--audio", str(audio))
            r = client.chat.completions.create(model=model, temperature=0, max_tokens=MAX_TOKENS, messages=[
                {"role": "user", "content": [
                    {"type": "input_audio", "input_audio": {"data": b64(audio), "format": "wav"}},
                    {"type": "text", "text": "What do you hear?"}]}])
            assert r.choices[0].message.content == want, (r.choices[0].message.content, want)
            transcript.extend(["## input_audio answer", "", repr(want), ""])

        def transcription():
            want = cli_reply(args, "--prompt", TRANSCRIBE, "--audio", str(audio)).strip()
            with open(audio, "rb") as f:
                r = client.audio.transcriptions.create(
                    model=model, file=f, extra_body={"max_tokens": MAX_TOKENS})
            assert r.text == want, (r.text, want)
            transcript.extend(["## transcription", "", repr(r.text), ""])

        def unknown_model_is_404():
            try:
                client.chat.completions.create(model="gpt-4o", messages=conversation, max_tokens=2)
            except Exception as e:  # openai.NotFoundError
                assert getattr(e, "status_code", None) == 404, e
            else:
                raise AssertionError("no error for an unknown model")

        def curl():
            body = json.dumps({"model": model, "messages": conversation, "temperature": 0,
                               "max_tokens": MAX_TOKENS})
            out = subprocess.run(
                ["curl", "-sS", "--fail-with-body", url + "/chat/completions",
                 "-H", "Content-Type: application/json", "-d", body],
                check=True, capture_output=True, text=True).stdout
            assert json.loads(out)["choices"][0]["message"]["content"] == expected_text, out
            out = subprocess.run(["curl", "-sS", url + "/models"], check=True,
                                 capture_output=True, text=True).stdout
            assert json.loads(out)["data"][0]["id"] == model, out

        for name, fn in [("models.list", models_list), ("chat completion", completion),
                         ("streamed chat completion", streamed), ("image_url", image_request),
                         ("input_audio", audio_request), ("transcription", transcription),
                         ("unknown model is 404", unknown_model_is_404), ("curl", curl)]:
            check(name, fn)
    except Exception:
        failed += 1
        traceback.print_exc()
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
    Path(args.transcript).parent.mkdir(parents=True, exist_ok=True)
    Path(args.transcript).write_text("\n".join(transcript))
    print(f"transcript: {args.transcript}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
