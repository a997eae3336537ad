"""Adapters on real response objects: the OpenAI SDK parsing an OpenAI-compatible server's answer
(served on loopback, no network), scikit-learn classifiers fitted on its bundled data, and arrays of
the shapes Hugging Face ``generate()`` returns (PyTorch is not installed here: multi-GB wheels)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import ScriptedStandin, Seen
from scipy.special import log_softmax

from calmon_client.adapters import (
    from_generate,
    from_openai,
    from_openai_stream,
    from_predict_proba,
    from_transition_scores,
)

openai = pytest.importorskip("openai", reason="pip install openai (a test dependency of calmon-client)")

CHAT = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1764400000,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris."},
            "finish_reason": "stop",
            "logprobs": {
                "content": [
                    {
                        "token": "Paris",
                        "logprob": -0.0031,
                        "bytes": [80, 97, 114, 105, 115],
                        "top_logprobs": [],
                    },
                    {"token": ".", "logprob": -0.25, "bytes": [46], "top_logprobs": []},
                ],
                "refusal": None,
            },
        },
        {
            "index": 1,
            "message": {"role": "assistant", "content": "Lyon"},
            "finish_reason": "stop",
            "logprobs": {"content": [{"token": "Lyon", "logprob": -2.3, "bytes": None, "top_logprobs": []}]},
        },
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}
LEGACY = {
    "id": "cmpl-1",
    "object": "text_completion",
    "created": 1764400000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [
        {
            "text": " Paris",
            "index": 0,
            "finish_reason": "stop",
            "logprobs": {
                "tokens": ["Q", " Paris"],
                "token_logprobs": [None, -0.01],
                "top_logprobs": [None, {" Paris": -0.01}],
                "text_offset": [0, 1],
            },
        }
    ],
}


def stream_body() -> bytes:
    chunks = []
    for token, logprob in [("Par", -0.1), ("is", -0.02), (".", -0.5)]:
        chunks.append(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1764400000,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": token},
                        "finish_reason": None,
                        "logprobs": {
                            "content": [
                                {"token": token, "logprob": logprob, "bytes": None, "top_logprobs": []}
                            ]
                        },
                    }
                ],
            }
        )
    chunks.append(
        {
            "id": "c",
            "object": "chat.completion.chunk",
            "created": 1764400000,
            "model": "m",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "logprobs": None}],
        }
    )
    return b"".join(b"data: " + json.dumps(c).encode() + b"\n\n" for c in chunks) + b"data: [DONE]\n\n"


def openai_compatible(request: Seen) -> tuple[int, dict[str, str], object]:
    if request.path.endswith("/chat/completions") and request.body.get("stream"):
        return 200, {"content-type": "text/event-stream"}, stream_body()
    if request.path.endswith("/chat/completions"):
        return 200, {}, CHAT
    return 200, {}, LEGACY


@pytest.fixture
def sdk(standin: ScriptedStandin) -> object:
    standin.script = openai_compatible
    return openai.OpenAI(base_url=f"{standin.url}/v1", api_key="not-a-key", max_retries=0)


def test_openai_chat_completion_from_the_sdk(sdk: object, standin: ScriptedStandin) -> None:
    response = sdk.chat.completions.create(  # type: ignore[attr-defined]
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Capital of France?"}], logprobs=True, n=2
    )
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert from_openai(response) == {"token_logprobs": [-0.0031, -0.25]}
    assert from_openai(response, choice=1) == {"token_logprobs": [-2.3]}
    assert standin.seen[0].body["logprobs"] is True
    assert from_openai(CHAT) == from_openai(response)  # parsed JSON (vLLM, llama.cpp server via requests)


def test_openai_legacy_completion_skips_the_echoed_prompt_token(sdk: object) -> None:
    response = sdk.completions.create(model="gpt-3.5-turbo-instruct", prompt="Q", logprobs=1, echo=True)  # type: ignore[attr-defined]
    assert isinstance(response, openai.types.Completion)
    assert from_openai(response) == {"token_logprobs": [-0.01]}


def test_openai_stream_gathers_every_chunk_in_order(sdk: object) -> None:
    stream = sdk.chat.completions.create(  # type: ignore[attr-defined]
        model="m", messages=[{"role": "user", "content": "?"}], logprobs=True, stream=True
    )
    assert from_openai_stream(stream) == {"token_logprobs": [-0.1, -0.02, -0.5]}


def test_openai_without_logprobs_says_how_to_ask_for_them() -> None:
    plain = openai.types.chat.ChatCompletion.model_validate(
        {**CHAT, "choices": [{**CHAT["choices"][0], "logprobs": None}]}  # type: ignore[dict-item]
    )
    with pytest.raises(ValueError, match=r"logprobs=True"):
        from_openai(plain)
    with pytest.raises(ValueError, match="no choice 5"):
        from_openai(CHAT, choice=5)
    with pytest.raises(ValueError, match="no chunk"):
        from_openai_stream([])


@pytest.mark.parametrize("loader", ["load_iris", "load_breast_cancer", "load_wine"])
def test_predict_proba_rows_of_real_classifiers(loader: str) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    X, y = getattr(datasets, loader)(return_X_y=True)
    names = getattr(datasets, loader)().target_names
    for labels in (y, names[y]):  # integer classes and string classes
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(X, labels)
        proba, predicted = clf.predict_proba(X[:40]), clf.predict(X[:40])
        for row, expected in zip(proba, predicted, strict=True):
            fields = from_predict_proba(row, clf.classes_)
            assert fields["probs"] == pytest.approx(row.tolist()) and math.isclose(sum(fields["probs"]), 1.0)
            assert fields["predicted"] == expected.item() and type(fields["predicted"]) in (int, str)
            json.dumps(fields)  # plain Python values only
    assert from_predict_proba([0.2, 0.8]) == {"probs": [0.2, 0.8]}
    with pytest.raises(ValueError, match="3 classes for 2"):
        from_predict_proba([0.2, 0.8], [0, 1, 2])


def generate_output(seed: int, vocab: int = 50, prompt: int = 4, steps: int = 6) -> dict[str, object]:
    """What generate(return_dict_in_generate=True, output_scores=True) holds for a batch of 2."""
    rng = np.random.default_rng(seed)
    scores = tuple(rng.normal(0, 3, (2, vocab)).astype(np.float32) for _ in range(steps))
    chosen = np.stack([s.argmax(axis=1) for s in scores], axis=1)
    sequences = np.concatenate([rng.integers(0, vocab, (2, prompt)), chosen], axis=1)
    return {"sequences": sequences, "scores": scores}


def test_generate_output_gives_the_log_softmax_of_each_chosen_token() -> None:
    out = generate_output(seed=3)
    for index in (0, 1):
        tokens = out["sequences"][index][-6:]  # type: ignore[index]
        expected = [
            float(log_softmax(s[index].astype(np.float64))[t])
            for s, t in zip(out["scores"], tokens, strict=True)
        ]  # type: ignore[arg-type]
        assert from_generate(out, index)["token_logprobs"] == pytest.approx(expected, abs=1e-9)
    generated = [int(t) for t in out["sequences"][0][4:]]  # type: ignore[index]
    eos = generated[2]
    kept = from_generate(out, 0, eos_token_id=eos)["token_logprobs"]
    assert len(kept) == generated.index(eos) + 1  # up to and including the first end-of-sequence token
    assert kept == from_generate(out, 0)["token_logprobs"][: len(kept)]


def test_raw_logits_are_preferred_over_processed_scores() -> None:
    out = generate_output(seed=4)
    processed = tuple(np.where(s >= np.sort(s, axis=1)[:, -3:-2], s / 0.7, -np.inf) for s in out["scores"])  # type: ignore[union-attr]
    both = {"sequences": out["sequences"], "scores": processed, "logits": out["scores"]}
    assert from_generate(both) == from_generate(out)


def test_transition_scores_rows() -> None:
    assert from_transition_scores(np.array([-0.1, -0.2, -3.0]), length=2) == {"token_logprobs": [-0.1, -0.2]}
    with pytest.raises(ValueError):
        from_transition_scores([])
