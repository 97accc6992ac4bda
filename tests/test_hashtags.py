"""Hashtag normalization: NFKC, casefold, '#' stripped, phrases joined, dedup in order."""

from pipeline.text.hashtags import extract_hashtags, normalize_hashtag, normalize_hashtags


def test_normalize_examples():
    assert normalize_hashtag("#BrownBear") == "brownbear"
    assert normalize_hashtag("  Face With Tears of Joy ") == "face_with_tears_of_joy"
    assert normalize_hashtag("ＣＡＴ") == "cat"  # full-width letters folded by NFKC
    assert normalize_hashtag("Straße") == "strasse"  # casefold, not lower
    assert normalize_hashtag("do\x00g\u200b") == "dog"  # control and format characters removed
    assert normalize_hashtag("#") == ""
    assert normalize_hashtag("t-shirt") == "t-shirt"


def test_dedup_keeps_first_order():
    assert normalize_hashtags(["Dog", "#dog", "cat", "", "  ", "DOG", "Cat!"]) == ["dog", "cat"]


def test_extract_from_caption():
    assert extract_hashtags("sunset at the beach #Sunset #beach_life! and #2024") == ["Sunset", "beach_life", "2024"]
    assert extract_hashtags("no tags here") == []
