"""The per-token SSE fast path writes exactly what the pydantic chunk model would."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.api.completions import content_chunk_writer
from app.api.serving import sse
from app.schemas import ChatChunkChoice, ChatCompletionChunk, ChunkDelta

# model output is decoded with errors="replace": never a lone surrogate
TEXT = st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=300, deadline=None)
@given(text=TEXT, index=st.integers(0, 7), model=TEXT, completion_id=TEXT)
def test_content_chunks_equal_the_model_serialization(text, index, model, completion_id):
    fast = content_chunk_writer(completion_id, 1_700_000_000, model)(index, text)
    choice = ChatChunkChoice(index=index, delta=ChunkDelta(content=text))
    slow = sse(ChatCompletionChunk(id=completion_id, created=1_700_000_000, model=model, choices=[choice]))
    assert fast == slow
