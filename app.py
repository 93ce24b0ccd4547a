"""The avatar4d Gradio app (also a Hugging Face Space).

Importing this module builds ``demo`` (a ``gr.Blocks``) without launching it; ``python app.py [--model ID]
[--port N] [--share]`` launches it. The model also comes from the ``AVATAR_MODEL`` environment variable.

This first version shows which model is selected, which of its upstream files are in the cache, and exactly
how to fetch what is missing. Photo reconstruction and video reenactment are added as the Portrait4D port and
the pipeline land; until then the page says so rather than pretending.
"""

from __future__ import annotations

import argparse
import logging
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the app

import gradio as gr  # noqa: E402

from avatar.hub.download import cache_root, is_converted  # noqa: E402
from avatar.hub.registry import DEFAULT_MODEL_ID, MODELS, get_model  # noqa: E402

logger = logging.getLogger("avatar.app")


def model_status(model_id: str) -> str:
    """A Markdown report: the model, where its files come from, which are cached, what to run."""
    try:
        spec = get_model(model_id)
    except KeyError as exc:
        return f"**Unknown model** `{model_id}`: {exc.args[0]}"
    have = [f for f in spec.files if is_converted(f)]
    missing = [f for f in spec.files if not is_converted(f)]
    lines = [
        f"### Model `{spec.model_id}`",
        spec.description,
        "",
        f"Cache: `{cache_root()}` · files present: **{len(have)}/{len(spec.files)}**",
    ]
    if missing:
        lines += [
            "",
            "**Weights missing.** These upstream files are not in the cache yet:",
            "",
            *[f"- `{f.path}` ({f.repo}) — {f.description}" for f in missing],
            "",
            f"Fetch them with `avatar download {spec.model_id}` on a machine with network access, or "
            f"`avatar download {spec.model_id} --from-dir DIR` with a folder holding the official files "
            "(then restart the app).",
        ]
    else:
        lines += ["", "All files are present and converted."]
    lines += [
        "",
        "Licences: the Portrait4D Hub repo is tagged MIT; FLAME, BFM and ArcFace weights have their own "
        "non-commercial terms (see `avatar models --files` and the README).",
    ]
    return "\n".join(lines)


def build_demo(model_id: str | None = None) -> gr.Blocks:
    """Build the app's Blocks for ``model_id`` (default: ``$AVATAR_MODEL`` or ``portrait4d-v2``)."""
    selected = model_id or os.environ.get("AVATAR_MODEL") or DEFAULT_MODEL_ID
    with gr.Blocks(title="avatar4d: one-shot 4D head avatars") as demo:
        gr.Markdown(
            "# avatar4d\nOne-shot 4D head avatars: build an animatable 3D head from one portrait photo, render it "
            "from any camera, and reenact it with a driving video (Portrait4D / Portrait4D-v2)."
        )
        with gr.Row():
            model = gr.Dropdown(choices=list(MODELS), value=selected if selected in MODELS else DEFAULT_MODEL_ID,
                                label="Model")
            refresh = gr.Button("Check model files", variant="secondary")
        status = gr.Markdown(model_status(selected), elem_id="model-status")
        gr.Markdown(
            "**Reconstruct** (photo → orbit video) and **Reenact** (photo + driving video → video) are not "
            "available in this version yet: they arrive with the Portrait4D network port and the pipeline."
        )
        refresh.click(model_status, inputs=model, outputs=status, api_name="status")
        model.change(model_status, inputs=model, outputs=status, api_name=False)
    return demo


demo = build_demo()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Start the avatar4d Gradio app on localhost.")
    parser.add_argument("--model", default=None, help=f"model id (default $AVATAR_MODEL or {DEFAULT_MODEL_ID})")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = build_demo(args.model) if args.model else demo
    logger.info("starting on http://%s:%d", args.host, args.port)
    app.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
