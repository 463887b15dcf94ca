"""The Gradio page: a photo and a question, the base and the tuned answer side by side.

API for scripts: ``Client(url).predict(image, question, max_new_tokens, temperature,
api_name="/compare")`` → ``(base_answer, tuned_answer)``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from vlmtune.app.session import (
    LABELS,
    ChatModel,
    Conversation,
    Target,
    headline_metrics,
    heldout_examples,
    mlflow_run,
)

log = logging.getLogger(__name__)
MLFLOW_UI = "http://127.0.0.1:5000"


def load_models(target: Target) -> tuple[dict[str, ChatModel], dict[str, str]]:
    """Both models, and for each one that cannot be loaded, why (shown on the page)."""
    models, errors = {}, {}
    for label in LABELS:
        try:
            models[label] = ChatModel(target, label)
        except Exception as err:  # noqa: BLE001 - the page says so instead of not starting
            log.warning("cannot load the %s model: %s", label, err)
            errors[label] = f"The {label} model cannot be loaded: {err}"
    return models, errors


def compare_answers(models: dict[str, ChatModel], errors: dict[str, str], image: str | None,
                    question: str, max_new_tokens: float, temperature: float,
                    ) -> Iterator[tuple[str, str]]:
    """(base so far, tuned so far) as both are generated, base first."""
    from vlmtune.data.images import open_image

    question = (question or "").strip()
    if not question:
        yield "Type a question first.", "Type a question first."
        return
    conv = Conversation()
    if image:
        conv.attach(open_image(Path(image)))
    answers = {label: errors.get(label, "") for label in LABELS}
    for label in LABELS:
        if label not in models:
            continue
        for text in models[label].reply(conv, question, max_new_tokens=int(max_new_tokens),
                                        temperature=float(temperature)):
            answers[label] = text
            yield answers["base"], answers["tuned"]
    yield answers["base"], answers["tuned"]


def run_info(target: Target) -> str:
    """Markdown: where the models come from, headline metrics, the MLflow run."""
    lines = [f"**Run:** `{target.run_dir}`" if target.run_dir else
             f"**Model:** `{target.tuned[0]}`"]
    metrics = headline_metrics(target.run_dir)
    if metrics:
        lines += ["", "| benchmark | metric | base | tuned |", "|---|---|---|---|"]
        for bench, found in metrics.items():
            name = (found.get("tuned") or found.get("base"))["name"]
            cells = [f"{found[k]['value']:.3f}" if k in found else "–" for k in LABELS]
            lines.append(f"| {bench} | {name} | {cells[0]} | {cells[1]} |")
    tracked = mlflow_run(target)
    if tracked:
        uri, run_id = tracked
        from vlmtune.tracking.lookup import experiment_id_of

        server = uri.rstrip("/") if uri.startswith(("http://", "https://")) else MLFLOW_UI
        experiment = experiment_id_of(uri, run_id)
        link = (f"{server}/#/experiments/{experiment}/runs/{run_id}" if experiment
                else f"{server}/#/")
        note = "" if server != MLFLOW_UI else f" (start the UI: `make ui MLFLOW_URI={uri}`)"
        lines += ["", f"**MLflow run:** [{run_id}]({link}){note}"]
    return "\n".join(lines)


def build_page(target: Target, *, max_new_tokens: int = 128, temperature: float = 0.0) -> Any:
    """The gr.Blocks page (models loaded now); the controls start at the given settings."""
    import gradio as gr

    models, errors = load_models(target)
    with gr.Blocks(title="vlmtune: base vs tuned") as page:
        gr.Markdown("## vlmtune: try your model — base and tuned side by side")
        gr.Markdown(run_info(target))
        for message in errors.values():
            gr.Markdown(f"**⚠ {message}**", elem_classes=["load-error"])
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="filepath", label="Photo", elem_id="photo")
                question = gr.Textbox(label="Question", lines=3, elem_id="question")
                with gr.Row():
                    max_new = gr.Slider(1, 512, value=max_new_tokens, step=1,
                                        label="Max new tokens", elem_id="max-new-tokens")
                    temp = gr.Slider(0.0, 2.0, value=temperature, step=0.05,
                                     label="Temperature", elem_id="temperature")
                button = gr.Button("Compare", variant="primary", elem_id="compare")
            with gr.Column():
                base = gr.Textbox(label="Base", lines=6, elem_id="base-answer")
                tuned = gr.Textbox(label="Tuned", lines=6, elem_id="tuned-answer")
        examples = heldout_examples(target)
        if examples:
            gr.Examples([[str(p), q] for p, q in examples], inputs=[image, question],
                        label="Held-out photos")

        def compare(image_path, text, max_new_tokens, temperature):
            yield from compare_answers(models, errors, image_path, text, max_new_tokens,
                                       temperature)

        button.click(compare, inputs=[image, question, max_new, temp],
                     outputs=[base, tuned], api_name="compare")
    return page


def serve(target: Target, *, host: str = "127.0.0.1", port: int = 7860,
          max_new_tokens: int = 128, temperature: float = 0.0) -> None:
    """Build the page and serve it until interrupted."""
    import gradio as gr

    page = build_page(target, max_new_tokens=max_new_tokens, temperature=temperature)
    allowed = sorted({str(p.parent) for p, _ in heldout_examples(target)})
    theme = gr.themes.Default(font=["sans-serif"], font_mono=["monospace"])  # nothing fetched
    page.queue().launch(server_name=host, server_port=port, allowed_paths=allowed,
                        theme=theme, show_error=True)
