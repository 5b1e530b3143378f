"""Refusals name the settings that differ, at any depth."""

from fastfree.settings_diff import settings_diff


def test_every_differing_leaf_is_named_with_its_path():
    have = {"free": {"bell": {"outer": "interpolate", "augment": False}, "k": 5}, "shots": [5]}
    want = {"free": {"bell": {"outer": "adam", "augment": False}, "k": 5}}
    assert settings_diff(have, want) == "free.bell.outer: 'interpolate' there, 'adam' now; shots: [5] there, None now"
    assert settings_diff(have, have) == "unknown difference"
    assert settings_diff(None, want, missing="no readable fingerprint.json") == "no readable fingerprint.json"
