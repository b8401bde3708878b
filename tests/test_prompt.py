import torch

from scal_sdt.host.prompt import FILLER_ID, tokenize
from scal_sdt.host.tokenizer import CHUNK_TOKENS, clip_tokenizer


def test_embedding_name_takes_its_vector_count_and_windows_are_padded():
    tok = clip_tokenizer()
    b = tokenize(["a photo of mything, red", "plain"], tok, {"mything": 3})
    assert b.ids.shape == (2, 1, 77)
    row = b.ids[0, 0].tolist()
    assert row[0] == tok.bos_id
    words = tok.encode("a photo of")
    assert row[1:1 + len(words)] == words
    assert row[1 + len(words):4 + len(words)] == [FILLER_ID] * 3
    assert b.slots[0].row == 0 and b.slots[0].pos == 1 + len(words) and b.slots[0].name == "mything"
    assert b.ids[1, 0, 1 + len(tok.encode("plain"))] == tok.eos_id
    assert (b.ids[1, 0, 3:] == -1).all()  # padding is filled per encoder later


def test_name_inside_another_word_is_not_an_embedding():
    tok = clip_tokenizer()
    b = tokenize(["mythings and xmything"], tok, {"mything": 2})
    assert b.slots == []


def test_embedding_never_straddles_two_windows():
    tok = clip_tokenizer()
    text = " ".join(["cat"] * (CHUNK_TOKENS - 2)) + " emb"
    b = tokenize([text], tok, {"emb": 4})
    assert b.windows == 2
    assert b.slots[0].window == 1 and b.slots[0].pos == 1


def test_embedding_equal_to_token_vectors_reproduces_the_text(tiny_hosts):
    for name in ("tiny-sd1", "tiny-sd2", "tiny-sdxl"):
        host = tiny_hosts(name)
        vectors = host.token_vectors("red star")
        with torch.no_grad():
            literal = host.encode_prompts(["a red star on blue"], size=(64, 64))
            spliced = host.encode_prompts(["a myemb on blue"], {"myemb": vectors}, size=(64, 64))
        assert torch.allclose(literal.context, spliced.context, atol=1e-5), name
        if literal.pooled is not None:
            assert torch.allclose(literal.pooled, spliced.pooled, atol=1e-5)


def test_conditioning_shapes_per_family(tiny_hosts):
    expect = {"tiny-sd1": (77, 32, None), "tiny-sd2": (77, 64, None), "tiny-sdxl": (77, 96, 64)}
    for name, (length, width, pooled) in expect.items():
        host = tiny_hosts(name)
        with torch.no_grad():
            c = host.encode_prompts(["one", "two " * 80], size=(64, 64))
        assert c.context.shape == (2, 2 * length, width)
        assert (c.pooled is None) == (pooled is None)
        if pooled:
            assert c.pooled.shape == (2, pooled) and c.time_ids.shape == (2, 6)
