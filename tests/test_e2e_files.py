"""End to end (#17): files shared with the bot reach the model through the real Bolt app — images
as image parts, downscaled; PDFs and text files as text in the prompt; follow-ups read them from
the store, not Slack; files that cannot be read are named to the person and the rest is answered;
a model that refuses images is asked again without them, and remembered."""

from __future__ import annotations

import base64
import io
import json
import time
import wave
import zipfile
from typing import Any

import pytest
from PIL import Image
from pypdf import PdfReader, PdfWriter

from bot.compose import RunningBot
from bot.events import FileGone, MalformedEvent
from bot.store.keys import KeySchema
from tests.conftest import sync_client
from tests.fakes.openai import Answer, FakeOpenAI, Request
from tests.fakes.slack import (
    FakeSlack,
    assistant_thread_started_event,
    file_share_event,
    mention_event,
    message_event,
)
from tests.redis_server import RedisServer
from tests.test_files import scanned_pdf, text_pdf

BOT = "U0BOT"


def _screenshot(size: tuple[int, int] = (2880, 1800)) -> bytes:
    """A Retina screenshot: flat colours, a few bars of "text", PNG."""
    shot = Image.new("RGB", size, (245, 245, 245))
    for row in range(40, size[1] - 40, 60):
        shot.paste((30, 30, 30), (80, row, size[0] // 2 + row % 700, row + 18))
    out = io.BytesIO()
    shot.save(out, "PNG")
    return out.getvalue()


def _photo(size: tuple[int, int] = (4000, 3000)) -> bytes:
    """A 12 MP phone photo (noise over smooth light), JPEG quality 90, held upright."""
    light = Image.linear_gradient("L").resize(size)
    photo = Image.merge("RGB", (light, Image.effect_noise(size, 24), light))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to view
    out = io.BytesIO()
    photo.save(out, "JPEG", quality=90, exif=exif)
    return out.getvalue()


def _user_content(request: Request) -> Any:
    return [m for m in request.messages if m.get("role") == "user"][-1]["content"]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


async def _answered(slack: FakeSlack, text: str, timeout: float = 15) -> str:
    """The bot's reply text once it holds ``text``."""
    await slack.wait_for(lambda: any(text in m.text for m in slack.bot_messages()), timeout)
    return next(m.text for m in slack.bot_messages() if text in m.text)


def _decoded(data_url: str) -> Image.Image:
    head, _, data = data_url.partition(",")
    assert head in ("data:image/jpeg;base64", "data:image/png;base64")
    return Image.open(io.BytesIO(base64.b64decode(data)))


async def test_a_screenshot_with_a_mention_reaches_the_model_as_a_downscaled_image_part(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.script(Answer(text="It shows a settings page."))
    shot = slack.upload(_screenshot(), name="screen shot.png")
    await slack.send_event(file_share_event("what is this?", [shot], mention=BOT))
    await _answered(slack, "It shows a settings page.")

    content = _user_content(llm.requests[0])
    assert isinstance(content, list)
    assert content[0]["type"] == "text"
    assert content[0]["text"].startswith("what is this?")
    assert '<attachment name="screen shot.png" type="image/png"' in content[0]["text"]
    assert [part["type"] for part in content[1:]] == ["image_url"]
    image = _decoded(content[1]["image_url"]["url"])
    assert max(image.size) <= 1568 and image.width * image.height <= 1_150_000
    assert abs(image.width / image.height - 2880 / 1800) < 0.01  # the shape kept
    assert len(slack.file_downloads(shot["id"])) == 1


async def test_a_phone_photo_is_sent_upright_and_a_fraction_of_its_size(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    photo_bytes = _photo()
    photo = slack.upload(photo_bytes, name="IMG_0001.jpg")
    await slack.send_event(file_share_event("", [photo], mention=BOT))
    await _answered(slack, "Hello from the fake model.")

    [url] = llm.requests[0].images
    image = _decoded(url)
    assert image.height > image.width  # the EXIF rotation applied
    assert image.width * image.height <= 1_150_000
    sent = len(url)
    print(f"\n12 MP photo: {len(photo_bytes):,} bytes uploaded, {sent:,} bytes sent (data URL)")
    assert sent < len(photo_bytes) / 4


async def test_a_pdf_is_read_into_the_prompt_and_a_follow_up_does_not_download_it_again(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    pdf = slack.upload(
        text_pdf(["Quarterly revenue was 42 million euros.", "Headcount grew to 310."]),
        name="q3 report.pdf",
    )
    llm.script(Answer(text="Revenue: 42 million."), Answer(text="Headcount: 310."))
    first = file_share_event("summarise this", [pdf], mention=BOT)
    await slack.send_event(first)
    await _answered(slack, "Revenue: 42 million.")
    question = _text(_user_content(llm.requests[0]))
    assert question.startswith('summarise this\n\n<attachment name="q3 report.pdf"')
    assert "Quarterly revenue was 42 million euros." in question
    assert "Headcount grew to 310." in question

    await slack.send_event(mention_event("and the headcount?", thread_ts=first["ts"]))
    await _answered(slack, "Headcount: 310.")
    earlier = [m for m in llm.requests[1].messages if m.get("role") == "user"]
    assert earlier[-1]["content"] == "and the headcount?"
    assert "Headcount grew to 310." in _text(earlier[0]["content"])
    assert len(slack.file_downloads(pdf["id"])) == 1  # the follow-up read it from the store


async def test_files_without_words_are_answered_not_met_with_the_help_note(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    notes = slack.upload(b"- ship the release\n- book the offsite\n", name="todo.md")
    event = file_share_event("", [notes], channel="D0DM", channel_type="im")
    await slack.send_event(event)
    await _answered(slack, "Hello from the fake model.")
    assert "ship the release" in _text(_user_content(llm.requests[0]))
    assert not any("Ask me anything" in m.text for m in slack.bot_messages())


async def test_bad_files_are_named_to_the_person_and_the_rest_is_answered(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "inside")
    files = [
        slack.upload(b"x" * 5000, name="big.log"),
        slack.upload(text_pdf(["secret"], password="pw"), name="locked.pdf"),
        slack.upload(archive.getvalue(), name="bundle.zip"),
        slack.upload(b"gone soon", name="gone.txt"),
        slack.upload(b"The launch is on Tuesday.", name="plan.txt"),
    ]
    slack.delete_file(files[3]["id"])  # deleted after it was shared: a 404 to the download
    llm.script(Answer(text="The launch is on Tuesday."))
    async with start_bot(file_max_bytes=4096) as running:
        await slack.send_event(file_share_event("when is the launch?", files, mention=BOT))
        reply = await _answered(slack, "The launch is on Tuesday.")
        exposition = running.metrics.exposition().decode()
    assert 'slackbot_files_total{kind="note"} 4.0' in exposition
    assert 'slackbot_files_total{kind="document"} 1.0' in exposition
    for name in ("big.log", "locked.pdf", "bundle.zip", "gone.txt"):
        assert name in reply.split("The launch is on Tuesday.")[0], name
    assert "too big" in reply and "password" in reply.lower() and "archive" in reply
    assert "Traceback" not in reply and "Error" not in reply
    question = _text(_user_content(llm.requests[0]))
    assert "The launch is on Tuesday." in question
    assert question.count("(not read)") == 4  # the model is told too, and invents nothing


async def test_without_files_read_the_person_is_told_what_the_app_needs(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    slack.files_read = False
    doc = slack.upload(b"numbers", name="data.csv")
    llm.script(Answer(text="I could not see the file."))
    await slack.send_event(file_share_event("read this", [doc], mention=BOT))
    reply = await _answered(slack, "I could not see the file.")
    assert "files:read" in reply


async def test_a_model_without_vision_is_asked_again_without_the_image_and_remembered(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.refuse_images = True
    llm.script(Answer(text="I can only read text."), Answer(text="Still text only."))
    shot = slack.upload(_screenshot((800, 600)), name="chart.png")
    first = file_share_event("what does the chart say?", [shot], mention=BOT)
    await slack.send_event(first)
    reply = await _answered(slack, "I can only read text.")
    assert reply.index("couldn't look at chart.png") < reply.index("I can only read text.")
    refused, retried = llm.requests
    assert refused.images and not retried.images
    assert "cannot see images" in _text(_user_content(retried))
    assert '<attachment name="chart.png"' in _text(_user_content(retried))

    # Remembered: the next image goes without a refused request first.
    other = slack.upload(_screenshot((640, 480)), name="graph.png")
    await slack.send_event(file_share_event("and this one?", [other], thread_ts=first["ts"]))
    reply = await _answered(slack, "Still text only.")
    assert len(llm.requests) == 3 and not llm.requests[2].images
    assert "couldn't look at graph.png" in reply

    # A follow-up without images: the earlier ones are not sent, and not told about again.
    llm.script(Answer(text="You're welcome."))
    await slack.send_event(message_event("thanks", thread_ts=first["ts"]))
    reply = await _answered(slack, "You're welcome.")
    assert len(llm.requests) == 4 and not llm.requests[3].images
    assert "couldn't look" not in reply
    assert "cannot see images" in _text(llm.requests[3].messages[1]["content"])


async def test_the_responses_api_gets_input_image_parts(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    shot = slack.upload(_screenshot((800, 600)), name="ui.png")
    async with start_bot(openai_api_mode="responses"):
        await slack.send_event(file_share_event("what is this?", [shot], mention=BOT))
        await _answered(slack, "Hello from the fake model.")
    content = _user_content(llm.requests[0])
    assert [part["type"] for part in content] == ["input_text", "input_image"]
    assert content[1]["image_url"].startswith("data:image/")


async def test_older_images_are_named_not_sent_again(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    shot = slack.upload(_screenshot((800, 600)), name="before.png")
    async with start_bot(image_history_turns=0):
        first = file_share_event("look", [shot], mention=BOT)
        await slack.send_event(first)
        await slack.wait_for(lambda: len(slack.bot_messages()) == 1, timeout=15)
        await slack.send_event(mention_event("what colour was it?", thread_ts=first["ts"]))
        await slack.wait_for(lambda: len(llm.requests) == 2, timeout=15)
        await slack.wait_for(lambda: len(slack.bot_messages()) == 2, timeout=15)
    assert len(llm.requests[0].images) == 1 and not llm.requests[1].images
    earlier = _text(next(m for m in llm.requests[1].messages if m["role"] == "user")["content"])
    assert "before.png" in earlier and "not attached this time" in earlier
    assert len(slack.file_downloads(shot["id"])) == 1


async def test_with_vision_off_images_are_not_downloaded(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    shot = slack.upload(_screenshot((800, 600)), name="pic.png")
    async with start_bot(model_vision="off"):
        await slack.send_event(file_share_event("see?", [shot], mention=BOT))
        reply = await _answered(slack, "Hello from the fake model.")
    assert "can't see images" in reply
    assert not llm.requests[0].images and not slack.file_downloads(shot["id"])


def _long_text_pdf(at_least: int) -> tuple[bytes, int]:
    """A text-only PDF of at least ``at_least`` bytes (thousands of pages) and its page count."""
    pages = [f"Page {n}: " + "lorem ipsum dolor sit amet " * 12 for n in range(1, 2500)]
    data = text_pdf(pages)
    while len(data) < at_least:
        pages += pages[: len(pages) // 2]
        data = text_pdf(pages)
    return data, len(pages)


def _report_pdf(pages: int = 21) -> bytes:
    """A report: a photo-like picture (about 0.25 MB) and a line of text on every page."""
    pictures = [Image.merge("RGB", [Image.effect_noise((900, 700), 30)] * 3) for _ in range(pages)]
    scanned = io.BytesIO()
    pictures[0].save(scanned, "PDF", resolution=100.0, save_all=True, append_images=pictures[1:])
    words = PdfReader(io.BytesIO(text_pdf([f"Revenue grew in region {n}." for n in range(pages)])))
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(scanned.getvalue())))
    for page, text in zip(writer.pages, words.pages, strict=True):
        page.merge_page(text)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def test_time_to_first_text_with_a_5_mb_pdf(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    """Measured, not judged tightly: a 5 MB PDF is downloaded, its text read and sent before
    the model's first token (the fake answers at once); from the event to the answer's first
    text shown in Slack, printed. Two shapes: 21 pages of pictures and text, and a text-only
    PDF of thousands of pages (the first 300 are read)."""
    long, pages = _long_text_pdf(5_000_000)
    for data, label in ((_report_pdf(), "21 pages, pictures"), (long, f"{pages} pages, text")):
        pdf = slack.upload(data, name="big.pdf")
        answer = f"A long document ({label})."
        llm.script(Answer(text=answer, ttft=0.0))
        asked = len(llm.requests)
        started = time.monotonic()
        await slack.send_event(file_share_event("summarise", [pdf], mention=BOT))
        await _answered(slack, answer, timeout=60)
        shown = min(
            c.at
            for c in slack.ok_calls("chat.update") + slack.ok_calls("chat.postMessage")
            if "A long document" in str(c.args.get("text")) and label in str(c.args.get("text"))
        )
        request = llm.requests[asked]
        print(
            f"\n{len(data) / 1e6:.1f} MB PDF ({label}): event → model request "
            f"{request.at - started:.2f} s, → first text in Slack {shown - started:.2f} s"
        )
        assert "Revenue grew in region 20." in _text(_user_content(request)) or (
            "[cut here:" in _text(_user_content(request))
        )
        assert shown - started < 30


async def test_summoned_into_a_thread_the_bot_reads_the_files_shared_there_before(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    parent = slack.add_message("C0CHAN", "Here is the contract", user="U0OTHER")
    contract = slack.upload(text_pdf(["The notice period is 90 days."]), name="contract.pdf")
    shared = slack.add_message("C0CHAN", "", user="U0OTHER", thread_ts=parent)
    message = slack.message("C0CHAN", shared)
    assert message is not None
    message.files = [contract]  # a file shared without words
    llm.script(Answer(text="90 days."))
    await slack.send_event(mention_event("what is the notice period?", thread_ts=parent))
    await _answered(slack, "90 days.")
    users = [m for m in llm.requests[0].messages if m["role"] == "user"]
    shared_turn = json.loads(users[-2]["content"])  # two people spoke: each message as JSON
    assert shared_turn["from"] == "U0OTHER"
    assert shared_turn["text"].startswith('<attachment name="contract.pdf"')
    assert "The notice period is 90 days." in shared_turn["text"]
    assert len(slack.file_downloads(contract["id"])) == 1


def _voice_clip() -> bytes:
    """Half a second of silence as a WAV file."""
    out = io.BytesIO()
    with wave.open(out, "wb") as clip:
        clip.setnchannels(1)
        clip.setsampwidth(2)
        clip.setframerate(8000)
        clip.writeframes(b"\x00\x00" * 4000)
    return out.getvalue()


async def test_a_voice_clip_is_transcribed_with_transcribe_model(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    llm.transcript = "Please book the meeting room for Friday."
    clip = slack.upload(_voice_clip(), name="memo.wav")
    async with start_bot(transcribe_model="whisper-1"):
        await slack.send_event(file_share_event("", [clip], mention=BOT))
        await _answered(slack, "Hello from the fake model.")
    spoken, asked = llm.requests
    assert spoken.path == "/v1/audio/transcriptions"
    assert spoken.body["model"] == "whisper-1" and spoken.body["filename"] == "memo.wav"
    assert "Please book the meeting room for Friday." in _text(_user_content(asked))


async def test_without_transcribe_model_a_voice_clip_gets_a_note(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    clip = slack.upload(_voice_clip(), name="memo.wav")
    await slack.send_event(file_share_event("", [clip], mention=BOT))
    reply = await _answered(slack, "Hello from the fake model.")
    assert "memo.wav is an audio clip, and I can't listen to those." in reply
    assert all(r.path != "/v1/audio/transcriptions" for r in llm.requests)


async def test_through_a_store_outage_a_follow_up_reads_the_file_from_slack_again(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI, own_redis: RedisServer
) -> None:
    pdf = slack.upload(text_pdf(["The budget is 12,000 euros."]), name="budget.pdf")
    llm.script(Answer(text="Noted."), Answer(text="12,000 euros."))
    async with start_bot(redis_url=own_redis.url):
        first = file_share_event("keep this", [pdf], mention=BOT)
        await slack.send_event(first)
        await _answered(slack, "Noted.")
        own_redis.stop()
        await slack.send_event(message_event("what is the budget?", thread_ts=first["ts"]))
        await _answered(slack, "12,000 euros.")
    users = [m for m in llm.requests[1].messages if m["role"] == "user"]
    assert "The budget is 12,000 euros." in _text(users[0]["content"])
    assert len(slack.file_downloads(pdf["id"])) == 2  # the cache was down: read again


async def test_notes_lead_a_native_stream_too(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "inside")
    files = [slack.upload(archive.getvalue(), name="logs.zip")]
    llm.script(Answer(text="Please send the logs as text."))
    async with start_bot(stream_mode="native"):
        await slack.send_event(file_share_event("what failed?", files, mention=BOT))
        reply = await _answered(slack, "Please send the logs as text.")
    assert reply.index("logs.zip is an archive") < reply.index("Please send the logs")


async def test_a_slack_connect_file_is_read_through_files_info(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    shared = slack.upload(b"Partner SLA: 99.9%", name="sla.txt", connect=True)
    assert "url_private" not in shared  # the event names only the file
    await slack.send_event(file_share_event("what is the SLA?", [shared], mention=BOT))
    await _answered(slack, "Hello from the fake model.")
    assert "Partner SLA: 99.9%" in _text(_user_content(llm.requests[0]))
    assert slack.ok_calls("files.info")


async def test_a_file_name_in_a_note_cannot_mention_anyone(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("a.txt", "inside")
    named = slack.upload(archive.getvalue(), name="<!channel> <@U0BOSS> my_logs.zip")
    await slack.send_event(file_share_event("", [named], mention=BOT))
    reply = await _answered(slack, "Hello from the fake model.")
    assert "<!channel>" not in reply and "<@U0BOSS>" not in reply
    assert "&lt;!channel&gt; &lt;@U0BOSS&gt; my_logs.zip is an archive" in reply


async def test_with_file_input_native_a_pdf_goes_as_itself_and_again_from_the_store(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    data = text_pdf(["Quarterly revenue was 42 million euros."])
    report = slack.upload(data, name="q3.pdf")
    llm.script(Answer(text="42 million."), Answer(text="In euros."))
    async with start_bot(file_input="native"):
        first = file_share_event("summarise", [report], mention=BOT)
        await slack.send_event(first)
        await _answered(slack, "42 million.")
        await slack.send_event(mention_event("which currency?", thread_ts=first["ts"]))
        await _answered(slack, "In euros.")
    for request in llm.requests:
        content = next(m for m in request.messages if m["role"] == "user")["content"]
        assert content[1] == {
            "type": "file",
            "file": {
                "filename": "q3.pdf",
                "file_data": "data:application/pdf;base64," + base64.b64encode(data).decode(),
            },
        }
        assert "(the file itself is attached)" in content[0]["text"]
    assert len(slack.file_downloads(report["id"])) == 1


async def test_an_assistant_thread_started_with_files_alone_is_named_after_them(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    started = assistant_thread_started_event(channel="D0ASSIST")
    thread = started["assistant_thread"]["thread_ts"]
    await slack.send_event(started)
    await slack.wait_for(lambda: len(slack.bot_messages("D0ASSIST")) == 1, timeout=10)
    notes = slack.upload(b"- ship the release\n", name="todo.md")
    event = file_share_event("", [notes], channel="D0ASSIST", channel_type="im", thread_ts=thread)
    await slack.send_event(event)
    await slack.wait_for(lambda: ("D0ASSIST", thread) in slack.titles, timeout=10)
    assert slack.titles[("D0ASSIST", thread)] == "todo.md"
    assert "ship the release" in _text(_user_content(llm.requests[0]))


async def test_with_files_per_message_0_files_are_not_read_and_the_person_is_told(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    doc = slack.upload(b"secret plans", name="plans.txt")
    async with start_bot(files_per_message=0):
        await slack.send_event(file_share_event("read this", [doc], mention=BOT))
        reply = await _answered(slack, "Hello from the fake model.")
    assert "I don't read files here, so I didn't open plans.txt." in reply
    assert not slack.file_downloads(doc["id"])
    assert "secret plans" not in _text(_user_content(llm.requests[0]))


async def test_with_file_input_native_a_scanned_pdf_goes_as_itself(
    start_bot: Any, slack: FakeSlack, llm: FakeOpenAI
) -> None:
    scan = slack.upload(scanned_pdf(), name="receipt.pdf")
    async with start_bot(file_input="native"):
        await slack.send_event(file_share_event("total?", [scan], mention=BOT))
        reply = await _answered(slack, "Hello from the fake model.")
    content = _user_content(llm.requests[0])
    assert content[1]["type"] == "file" and content[1]["file"]["filename"] == "receipt.pdf"
    assert "scanned" not in reply  # nothing to tell: the model reads it


def test_file_deleted_and_unshared_events_name_the_file_to_forget() -> None:
    deleted = {"type": "file_deleted", "file_id": "F1", "event_ts": "1.2"}
    unshared = {"type": "file_unshared", "file": {"id": "F2"}, "user_id": "U1"}
    assert FileGone.from_event({"team_id": "T1"}, deleted) == FileGone("T1", "F1")
    assert FileGone.from_event({"team_id": "T1"}, unshared) == FileGone("T1", "F2")
    with pytest.raises(MalformedEvent):
        FileGone.from_event({"team_id": "T1"}, {"type": "file_deleted"})


async def test_a_file_deleted_in_slack_no_longer_reaches_the_model(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_url: str
) -> None:
    secret = slack.upload(b"The staging root password is hunter2-7419.\n", name="creds.txt")
    llm.script(Answer(text="Noted."), Answer(text="It is gone."))
    first = file_share_event("keep this for later", [secret], mention=BOT)
    await slack.send_event(first)
    await _answered(slack, "Noted.")
    assert "hunter2-7419" in _text(_user_content(llm.requests[0]))
    cached = KeySchema().file(slack.team_id, secret["id"])
    redis = sync_client(redis_url)
    assert redis.exists(cached)

    await slack.wait_ack(await slack.delete_file_and_tell(secret["id"]))
    await slack.wait_for(lambda: not redis.exists(cached), timeout=5, what="cache entry dropped")
    await slack.send_event(mention_event("what was the password?", thread_ts=first["ts"]))
    await _answered(slack, "It is gone.")
    sent = json.dumps(llm.requests[1].messages)
    assert "hunter2-7419" not in sent
    assert "was deleted" in sent  # the model is told the file is gone, not left to guess


async def test_images_too_old_to_be_sent_again_are_not_downloaded_again(
    bot: RunningBot, slack: FakeSlack, llm: FakeOpenAI, redis_url: str
) -> None:
    """IMAGE_HISTORY_TURNS=3: a follow-up after five questions with a screenshot each reads the
    last three (their cache entries expired: downloaded again) and names the older two from
    the stored turns, without files.info or a download."""
    shots = [slack.upload(_screenshot((320, 200)), name=f"step{n}.png") for n in range(5)]
    first = file_share_event("step 0", [shots[0]], mention=BOT)

    def answered(count: int) -> bool:
        done = [m for m in slack.bot_messages() if "Hello from the fake model." in m.text]
        return len(done) == count

    for n, shot in enumerate(shots):
        event = file_share_event(f"step {n}", [shot], mention=BOT, thread_ts=first["ts"])
        await slack.send_event(first if n == 0 else event)
        await slack.wait_for(lambda n=n: answered(n + 1), timeout=15)
    redis = sync_client(redis_url)
    for key in redis.scan_iter(match=KeySchema().file(slack.team_id, "*")):
        redis.delete(key)  # expired (FILE_CACHE_TTL_HOURS)
    info_calls = len(slack.calls_to("files.info"))

    await slack.send_event(mention_event("which step failed?", thread_ts=first["ts"]))
    await slack.wait_for(lambda: len(llm.requests) == 6, timeout=15)
    assert len(llm.requests[5].images) == 3
    assert [len(slack.file_downloads(s["id"])) for s in shots] == [1, 1, 2, 2, 2]
    assert len(slack.calls_to("files.info")) - info_calls == 3
    sent = json.dumps(llm.requests[5].messages)
    assert sent.count("not attached this time") == 2
    assert "step0.png" in sent and "step1.png" in sent
