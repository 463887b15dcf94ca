"""The terminal chat loop: commands, line continuation, streamed replies."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from vlmtune.app.session import ChatModel, Conversation, Target
from vlmtune.errors import VlmtuneError

HELP = ("commands: /image PATH (attach a photo to your next message), /base (toggle base / "
        "tuned), /reset (forget the conversation), /quit; end a line with \\ to continue it")


def read_message(read: Callable[[str], str], prompt: str = "you> ") -> str:
    """One message: lines ending in ``\\`` continue on the next one (joined by newlines)."""
    lines = []
    line = read(prompt)
    while line.endswith("\\"):
        lines.append(line[:-1])
        line = read("...> ")
    lines.append(line)
    return "\n".join(lines)


class ChatLoop:
    """``/image``, ``/base``, ``/reset``, ``/quit``; other text is a question to the model."""

    def __init__(self, target: Target, *, max_new_tokens: int = 128, temperature: float = 0.0,
                 out: TextIO = sys.stdout) -> None:
        self.target, self.out = target, out
        self.settings = {"max_new_tokens": max_new_tokens, "temperature": temperature}
        self.models: dict[str, ChatModel] = {}
        self.label = "tuned"
        self.conv = Conversation()

    def model(self) -> ChatModel:
        if self.label not in self.models:
            self.models[self.label] = ChatModel(self.target, self.label)
        return self.models[self.label]

    def handle(self, message: str) -> bool:
        """Act on one message; False when the chat should end."""
        text = message.strip()
        if not text:
            return True
        if text in ("/quit", "/exit"):
            return False
        if text == "/help":
            self._say(HELP)
        elif text == "/reset":
            self.conv.reset()
            self._say("(conversation cleared)")
        elif text == "/base":
            self.label = "base" if self.label == "tuned" else "tuned"
            self._say(f"(now talking to the {self.label} model)")
        elif text.startswith("/image"):
            self._attach(text.removeprefix("/image").strip())
        elif text.startswith("/"):
            self._say(f"unknown command {text.split()[0]}; {HELP}")
        else:
            self._answer(message.strip())
        return True

    def _attach(self, arg: str) -> None:
        from vlmtune.data.images import open_image

        path = Path(arg).expanduser()
        if not arg or not path.is_file():
            self._say(f"/image: no such file {arg!r}")
            return
        try:
            self.conv.attach(open_image(path))
        except Exception as err:  # noqa: BLE001 - a bad file is reported, the chat goes on
            self._say(f"/image: cannot read {path}: {err}")
            return
        self._say(f"(attached {path.name}; it goes with your next message)")

    def _answer(self, question: str) -> None:
        model = self.model()
        self.out.write(f"{self.label}> ")
        self.out.flush()
        shown = text = ""
        for text in model.reply(self.conv, question, **self.settings):
            # print what is settled: not a half-decoded character, not a changed prefix
            if text.startswith(shown) and not text.endswith("\ufffd"):
                self.out.write(text[len(shown):])
                self.out.flush()
                shown = text
        self.out.write(text[len(shown):] if text.startswith(shown) else "\n" + text)
        self.out.write("\n")
        self.out.flush()
        self.conv.add(question, text.removeprefix(model.template.reply_lead))  # it re-adds it

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)


def run_chat(target: Target, *, max_new_tokens: int = 128, temperature: float = 0.0,
             read: Callable[[str], str] = input) -> int:
    """Chat until ``/quit`` or end of input; returns the exit status."""
    loop = ChatLoop(target, max_new_tokens=max_new_tokens, temperature=temperature)
    where = target.run_dir or target.tuned[0]
    print(f"vlmtune chat: {where} ({target.model.family}, {target.model.chat_template}); "
          f"{HELP}", flush=True)
    try:
        loop.model()  # load the tuned model up front: a failure is reported before chatting
        while loop.handle(read_message(read)):
            pass
    except (EOFError, KeyboardInterrupt):
        print()
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    return 0
