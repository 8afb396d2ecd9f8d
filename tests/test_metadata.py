"""Message metadata cleaning (PROTOCOL 3.2): raw JSON values in, clean dicts out."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_channel.core.metadata import (
    build_metadata,
    clean_cli_apps,
    clean_image_generation,
    clean_mcp_presets,
)

Cleaner = Callable[[object], Sequence[Mapping[str, object]] | None]
BOTH: list[Cleaner] = [clean_cli_apps, clean_mcp_presets]

_KEYS = st.sampled_from(
    ["name", "display_name", "logo_url", "transport", "configured", "enabled"]
)
_NAMES = st.from_regex(r"\s?[A-Za-z0-9][A-Za-z0-9_ -]{0,70}", fullmatch=True)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text() | _NAMES,
    lambda children: (
        st.lists(children, max_size=12)
        | st.dictionaries(_KEYS | st.text(max_size=5), children, max_size=6)
    ),
    max_leaves=40,
)


@pytest.mark.parametrize("clean", BOTH)
@pytest.mark.parametrize(
    "raw",
    [
        None,
        "git",
        42,
        True,
        {"name": "git"},  # a dict, not a list
        ({"name": "git"},),  # a tuple is not a JSON array
        [],
        [None, 1, "git", ["git"]],
        [{}],
        [{"name": None}, {"name": 5}, {"name": ["git"]}],
        [{"name": ""}, {"name": "   "}],
        [{"name": "-git"}, {"name": "_git"}, {"name": "git tool"}],
        [{"name": "gït"}, {"name": "git!"}, {"name": "git.exe"}],
        [{"name": "\u212a"}, {"name": "\u017f"}],  # Kelvin sign, long s
        [{"name": "a" * 63 + " tail"}],  # strip first: the cut keeps the space
    ],
)
def test_nothing_usable_gives_none(clean: Cleaner, raw: object) -> None:
    assert clean(raw) is None


@pytest.mark.parametrize("clean", BOTH)
@pytest.mark.parametrize(
    ("raw_name", "name"),
    [
        ("git", "git"),
        ("Git", "git"),
        ("  GH-CLI_2 \n", "gh-cli_2"),
        ("0day", "0day"),
        ("a", "a"),
        ("a" * 64, "a" * 64),
        ("a" * 65, "a" * 64),  # cut to 64 before matching
        ("  " + "B" * 70, "b" * 64),
        ("a" * 64 + " tail", "a" * 64),  # the cut drops the invalid part
    ],
)
def test_names(clean: Cleaner, raw_name: str, name: str) -> None:
    assert clean([{"name": raw_name}]) == [{"name": name}]


@pytest.mark.parametrize("clean", BOTH)
def test_only_the_first_eight_raw_items_are_looked_at(clean: Cleaner) -> None:
    raw = [{"name": f"app{i}"} for i in range(9)]
    result = clean(raw)
    assert result is not None
    assert [item["name"] for item in result] == [f"app{i}" for i in range(8)]


@pytest.mark.parametrize("clean", BOTH)
def test_invalid_items_still_count_towards_eight(clean: Cleaner) -> None:
    invalid: list[object] = ["junk", {"name": "bad name"}]
    raw = invalid * 4 + [{"name": "late"}]
    assert len(raw) == 9
    assert clean(raw) is None
    result = clean([*raw[:7], {"name": "eighth"}, {"name": "ninth"}])
    assert result == [{"name": "eighth"}]


@pytest.mark.parametrize("clean", BOTH)
def test_duplicates_differing_in_case_keep_the_first(clean: Cleaner) -> None:
    raw = [
        {"name": "Git", "display_name": "first"},
        {"name": "git", "display_name": "second"},
        {"name": " GIT ", "display_name": "third"},
        {"name": "gh"},
    ]
    assert clean(raw) == [{"name": "git", "display_name": "first"}, {"name": "gh"}]


@pytest.mark.parametrize(
    ("clean", "field", "limit"),
    [
        (clean_cli_apps, "display_name", 160),
        (clean_cli_apps, "category", 160),
        (clean_cli_apps, "entry_point", 160),
        (clean_cli_apps, "brand_color", 160),
        (clean_cli_apps, "logo_url", 512),
        (clean_mcp_presets, "display_name", 160),
        (clean_mcp_presets, "logo_url", 512),
        (clean_mcp_presets, "transport", 160),
        (clean_mcp_presets, "status", 160),
    ],
)
def test_string_fields_are_clipped(clean: Cleaner, field: str, limit: int) -> None:
    for length in (0, limit - 1, limit, limit + 1, 3 * limit):
        result = clean([{"name": "x", field: "v" * length}])
        assert result == [{"name": "x", field: "v" * min(length, limit)}]


@pytest.mark.parametrize("clean", BOTH)
@pytest.mark.parametrize("value", [None, 1, 1.5, True, ["a"], {"a": "b"}])
def test_non_string_fields_are_dropped(clean: Cleaner, value: object) -> None:
    assert clean([{"name": "x", "display_name": value, "logo_url": value}]) == [
        {"name": "x"}
    ]


def test_cli_apps_keep_only_their_fields() -> None:
    raw = [
        {
            "name": "gh",
            "display_name": "GitHub CLI",
            "category": "vcs",
            "entry_point": "gh",
            "logo_url": "https://example.invalid/gh.png",
            "brand_color": "#000",
            "transport": "stdio",  # an mcp_presets field
            "status": "ok",
            "configured": True,
            "extra": "dropped",
        }
    ]
    assert clean_cli_apps(raw) == [
        {
            "name": "gh",
            "display_name": "GitHub CLI",
            "category": "vcs",
            "entry_point": "gh",
            "logo_url": "https://example.invalid/gh.png",
            "brand_color": "#000",
        }
    ]


def test_mcp_presets_keep_transport_status_configured() -> None:
    raw = [
        {
            "name": "Files",
            "display_name": "Files",
            "transport": "stdio",
            "status": "ready",
            "configured": False,
            "command": "rm -rf /",  # not a kept field
        }
    ]
    assert clean_mcp_presets(raw) == [
        {
            "name": "files",
            "display_name": "Files",
            "transport": "stdio",
            "status": "ready",
            "configured": False,
        }
    ]


@pytest.mark.parametrize(
    ("configured", "kept"),
    [
        (True, True),
        (False, False),
        ("true", None),
        (1, None),
        (0, None),
        (None, None),
    ],
)
def test_configured_must_be_a_real_boolean(configured: object, kept: object) -> None:
    result = clean_mcp_presets([{"name": "x", "configured": configured}])
    assert result is not None
    if kept is None:
        assert "configured" not in result[0]
    else:
        assert result[0]["configured"] is kept


@given(_json)
def test_cleaners_never_raise_and_stay_bounded(raw: object) -> None:
    for clean in BOTH:
        result = clean(raw)
        if result is None:
            continue
        assert 1 <= len(result) <= 8
        names = [item["name"] for item in result]
        assert len(set(names)) == len(names)
        for item in result:
            for key, value in item.items():
                assert isinstance(value, bool if key == "configured" else str)
                assert len(str(value)) <= 512
    clean_image_generation(raw)


# --- image_generation ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"enabled": True}, {"enabled": True, "aspect_ratio": None}),
        (
            {"enabled": True, "aspect_ratio": "16:9"},
            {"enabled": True, "aspect_ratio": "16:9"},
        ),
        (
            {"enabled": True, "aspect_ratio": 1.5},
            {"enabled": True, "aspect_ratio": None},
        ),
        (
            {"enabled": True, "aspect_ratio": "1:1", "model": "x"},
            {"enabled": True, "aspect_ratio": "1:1"},
        ),
        ({"enabled": False, "aspect_ratio": "16:9"}, None),
        ({"enabled": "true"}, None),
        ({"enabled": 1}, None),
        ({}, None),
        (None, None),
        (True, None),
        ([{"enabled": True}], None),
    ],
)
def test_clean_image_generation(raw: object, expected: object) -> None:
    assert clean_image_generation(raw) == expected


# --- build_metadata ------------------------------------------------------


def _build(**overrides: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "remote": "127.0.0.1:5000",
        "webui": None,
        "cli_apps": None,
        "mcp_presets": None,
        "workspace_scope": None,
        "image_generation": None,
        "streaming": True,
    }
    fields.update(overrides)
    return build_metadata(**fields)  # type: ignore[arg-type]


def test_minimal_metadata_has_remote_and_streaming_only() -> None:
    assert _build() == {"remote": "127.0.0.1:5000", "streaming": True}
    assert _build(streaming=False) == {"remote": "127.0.0.1:5000", "streaming": False}


@pytest.mark.parametrize(
    ("webui", "present"),
    [(True, True), (False, False), ("true", False), (1, False), (None, False)],
)
def test_webui_only_when_sent_as_true(webui: object, present: bool) -> None:
    metadata = _build(webui=webui)
    assert ("webui" in metadata) is present
    if present:
        assert metadata["webui"] is True


def test_full_metadata() -> None:
    scope = {"root": "/tmp/project"}
    metadata = _build(
        webui=True,
        cli_apps=[{"name": "GH"}, {"name": "gh"}],
        mcp_presets=[{"name": "files", "configured": True}],
        workspace_scope=scope,
        image_generation={"enabled": True, "aspect_ratio": "4:3"},
        streaming=False,
    )
    assert metadata == {
        "remote": "127.0.0.1:5000",
        "webui": True,
        "cli_apps": [{"name": "gh"}],
        "mcp_presets": [{"name": "files", "configured": True}],
        "workspace_scope": scope,
        "image_generation": {"enabled": True, "aspect_ratio": "4:3"},
        "streaming": False,
    }
    assert metadata["workspace_scope"] is scope  # passed through untouched


@pytest.mark.parametrize(
    "overrides",
    [
        {"cli_apps": []},
        {"cli_apps": [{"name": "bad name"}]},
        {"mcp_presets": "files"},
        {"image_generation": {"enabled": False}},
    ],
)
def test_empty_results_leave_the_key_out(overrides: dict[str, object]) -> None:
    assert _build(**overrides) == {"remote": "127.0.0.1:5000", "streaming": True}


@pytest.mark.parametrize("scope", [{}, "", 0, False])
def test_falsy_but_present_workspace_scope_is_kept(scope: object) -> None:
    assert _build(workspace_scope=scope)["workspace_scope"] == scope
