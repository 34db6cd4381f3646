"""Images at the model boundary (#17), against the fake model through the real SDK: image parts
as each API wants them, a model that refuses images asked again without them and remembered
(in the wordings servers use), MODEL_VISION on and off, and a voice clip transcribed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import pytest

from bot.errors import ModelUnavailable
from bot.llm import (
    IMAGE_NOT_SHOWN,
    AnswerStream,
    ChatModel,
    Forgetting,
    Transcriptions,
    connect_openai,
)
from tests.fakes.openai import Answer, FakeOpenAI

Api = Literal["chat", "responses"]
URL = "data:image/png;base64,iVBORw0KGgo="
WITH_IMAGE: list[dict[str, Any]] = [
    {"role": "system", "content": "Be brief."},
    {
        "role": "user",
        "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": URL}},
        ],
    },
]


@asynccontextmanager
async def chat_model(
    llm: FakeOpenAI, api: Api = "chat", vision: Literal["auto", "on", "off"] = "auto"
) -> AsyncIterator[ChatModel]:
    client = connect_openai(llm.api_key, llm.base_url).with_options(max_retries=0)
    try:
        yield ChatModel(client, model="m", idle_timeout=10, api=api, vision=vision)
    finally:
        await client.close()


async def ask(model: ChatModel, messages: list[dict[str, Any]]) -> tuple[str, AnswerStream]:
    async with model.stream(messages) as answer:
        text = "".join([delta async for delta in answer])
    return text, answer


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_image_parts_are_sent_in_each_apis_shape(llm: FakeOpenAI, api: Api) -> None:
    async with chat_model(llm, api) as model:
        await ask(model, WITH_IMAGE)
    user = llm.requests[0].messages[-1]["content"]
    if api == "chat":
        assert user == WITH_IMAGE[1]["content"]
    else:
        assert user == [
            {"type": "input_text", "text": "what is this?"},
            {"type": "input_image", "image_url": URL},
        ]
    assert llm.requests[0].images == [URL]


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_model_that_refuses_images_is_asked_again_without_them_and_remembered(
    llm: FakeOpenAI, api: Api
) -> None:
    llm.refuse_images = True
    llm.script(Answer(text="Text only."), Answer(text="Still."))
    async with chat_model(llm, api) as model:
        first_text, first = await ask(model, WITH_IMAGE)
        second_text, second = await ask(model, WITH_IMAGE)
        assert not model.sees_images("m") and model.sees_images("another-model")
    assert (first_text, second_text) == ("Text only.", "Still.")
    assert first.images_dropped and second.images_dropped
    refused, retried, later = llm.requests
    assert refused.images and refused.answer is None
    assert not retried.images and not later.images  # remembered: no refused request again
    # Text-only servers may take only string content: the image became a line in it.
    assert retried.messages[-1]["content"] == f"what is this?\n\n{IMAGE_NOT_SHOWN}"


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (500, "image input is not supported - hint: you may need to provide the mmproj"),
        (404, "No endpoints found that support image input"),  # OpenRouter
        (400, "Model does not support images. Please use a model that does."),  # LM Studio
        (400, "Qwen2ForCausalLM is not a multimodal model"),  # vLLM
        (400, "At most 0 image(s) may be provided in one request."),  # vLLM
        (422, "Failed to deserialize: unknown variant `image_url`, expected `text`"),
        (
            400,
            "'messages.1' : for 'role:user' the following must be satisfied"
            "[('messages.1.content' : value must be a string)]",
        ),  # Groq, a text-only model
        (400, "Image inputs are not supported by this model."),
    ],
)
async def test_other_wordings_of_a_refusal_of_images_are_recognised(
    llm: FakeOpenAI, status: int, message: str
) -> None:
    llm.script(Answer(status=status, error_message=message), Answer(text="Text only."))
    async with chat_model(llm) as model:
        text, answer = await ask(model, WITH_IMAGE)
    assert (text, answer.images_dropped) == ("Text only.", True)


async def test_a_bare_400_is_not_taken_for_a_refusal_of_images(llm: FakeOpenAI) -> None:
    llm.script(Answer(status=400, error_message="This model's maximum context length is 8192"))
    async with chat_model(llm) as model:
        with pytest.raises(ModelUnavailable):
            await ask(model, WITH_IMAGE)
        assert model.sees_images()
    assert len(llm.requests) == 1


async def test_with_vision_on_a_refusal_is_not_retried(llm: FakeOpenAI) -> None:
    llm.refuse_images = True
    async with chat_model(llm, vision="on") as model:
        with pytest.raises(ModelUnavailable):
            await ask(model, WITH_IMAGE)
    assert len(llm.requests) == 1


async def test_with_vision_off_no_image_is_sent(llm: FakeOpenAI) -> None:
    async with chat_model(llm, vision="off") as model:
        _, answer = await ask(model, WITH_IMAGE)
    assert answer.images_dropped and not llm.requests[0].images


async def test_text_only_messages_are_sent_as_they_are(llm: FakeOpenAI) -> None:
    messages = [{"role": "user", "content": "hi"}]
    async with chat_model(llm, "responses") as model:
        _, answer = await ask(model, messages)
    assert llm.requests[0].body["input"] == messages and not answer.images_dropped


async def test_a_clip_is_transcribed_and_a_failure_is_a_model_error(llm: FakeOpenAI) -> None:
    client = connect_openai(llm.api_key, llm.base_url).with_options(max_retries=0)
    try:
        words = await Transcriptions(client, model="whisper-1").transcribe(
            b"RIFF....WAVE", filename="memo.wav", mimetype="audio/wav"
        )
        llm.transcript = None
        with pytest.raises(ModelUnavailable):
            await Transcriptions(client, model="whisper-1").transcribe(
                b"RIFF....WAVE", filename="memo.wav", mimetype="audio/wav"
            )
    finally:
        await client.close()
    assert words == "Hello from the fake transcriber."
    assert llm.requests[0].body == {
        "model": "whisper-1",
        "filename": "memo.wav",
        "mimetype": "audio/wav",
        "size": 12,
    }


PDF_PART = {
    "type": "file",
    "file": {"filename": "q3.pdf", "file_data": "data:application/pdf;base64,JVBE"},
}


@pytest.mark.parametrize("api", ["chat", "responses"])
async def test_a_pdf_part_is_sent_in_each_apis_shape_and_kept_when_images_are_refused(
    llm: FakeOpenAI, api: Api
) -> None:
    llm.refuse_images = True
    messages = [{**WITH_IMAGE[1], "content": [*WITH_IMAGE[1]["content"], PDF_PART]}]
    async with chat_model(llm, api) as model:
        await ask(model, messages)
    refused, retried = llm.requests
    text_kind, pdf = (
        ("text", PDF_PART)
        if api == "chat"
        else (
            "input_text",
            {
                "type": "input_file",
                "filename": "q3.pdf",
                "file_data": "data:application/pdf;base64,JVBE",
            },
        )
    )
    assert refused.messages[0]["content"][2] == pdf
    assert retried.messages[0]["content"] == [
        {"type": text_kind, "text": "what is this?"},
        {"type": text_kind, "text": IMAGE_NOT_SHOWN},
        pdf,
    ]


def test_a_refusal_of_images_is_forgotten_after_a_while() -> None:
    # Refusals are read from an error's words: a misreading must not blind a model for good.
    now = [0.0]
    blind = Forgetting(3600.0, clock=lambda: now[0])
    blind.add("m")
    assert "m" in blind and "other" not in blind
    now[0] = 3599.0
    assert "m" in blind
    now[0] = 3600.0
    assert "m" not in blind


def test_errors_about_images_elsewhere_are_not_taken_for_a_model_without_vision() -> None:
    from bot.llm import _IMAGES_REFUSED

    for unrelated in (
        "image is not supported in assistant messages",
        "tool message content must be a string",
    ):
        assert not _IMAGES_REFUSED.search(unrelated), unrelated
    assert _IMAGES_REFUSED.search("Image input is not supported")
