import sys
import sysconfig
import warnings
from pathlib import Path

import pytest
import yaml

from data_prep.filters import (AUTOGEN_MARKERS, REASONS, FilterChain, FilterConfig, alnum_count,
                               python_parses, visible_html_text)
from data_prep.records import Record

LINE = "total = total + value;\n"      # 23 characters, comfortably inside every threshold


def code(n: int) -> str:
    """Ordinary-looking code of exactly n characters."""
    return (LINE * (n // len(LINE) + 1))[:n]


def rec(content: str, lang: str = "c", path: str = "src/x.c") -> Record:
    return Record(id=path, content=content, lang=lang, repo="org/repo", path=path)


def why(content: str, lang: str = "c", config=None) -> str | None:
    return FilterChain(config).reason(rec(content, lang))


def words(n: int) -> str:
    """One line of n characters: short words (a long run of letters would be "encoded data")."""
    return ("word " * (n // 5 + 1))[:n]


def blob(n: int) -> str:
    """n base64-alphabet characters, a newline after every 64 (the regex's class has \\n)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    return "".join("\n" if i % 65 == 64 else alphabet[i % 64] for i in range(n))


def test_ordinary_code_is_kept():
    assert why(code(5000)) is None


# ----------------------------------------------------------------------------- size / empty
@pytest.mark.parametrize("content", ["", " ", "\n\n\t  \r\n"])
def test_empty_and_whitespace_only_are_dropped(content):
    assert why(content) == "empty"


def test_one_character_is_not_empty():
    assert why("x") is None


def test_max_chars_default_is_one_million():
    assert why(code(1_000_000)) is None
    assert why(code(1_000_001)) == "too_large"


def test_max_chars_and_max_lines_configurable():
    assert why(code(100), config={"max_chars": 100}) is None
    assert why(code(101), config={"max_chars": 100}) == "too_large"
    assert why("a;\nb;\nc;\n", config={"max_lines": 3}) is None
    assert why("a;\nb;\nc;\nd", config={"max_lines": 3}) == "too_large"


def test_min_chars_counts_stripped_characters():
    assert why("  ab  ", config={"min_chars": 3}) == "empty"
    assert why("  abc  ", config={"min_chars": 3}) is None


# ----------------------------------------------------------------------------- binary
def test_nul_byte_is_binary():
    assert why(code(500) + "\x00" + code(500)) == "binary"
    assert why("import os\x00\n", lang="python") == "binary"


def test_control_character_fraction():
    # 1% of 1000 characters is allowed, one more is not; \t \n \r \f do not count.
    body = code(990)
    assert why(body + "\x01" * 10) is None
    assert why(body[:-1] + "\x01" * 11) == "binary"
    assert why(code(600).replace(" ", "\t") + "\f" * 50 + "\r\n" * 20) is None


# ----------------------------------------------------------------------------- basic
def test_max_line_length_at_threshold():
    head = code(20 * len(LINE))
    assert why(head + words(1000) + "\n") is None
    assert why(head + words(1001) + "\n") == "max_line_length"


def test_mean_line_length_at_threshold():
    line = words(100)
    assert why("\n".join([line] * 10)) is None
    assert why("\n".join([line] * 9 + [line + "s"])) == "mean_line_length"


def test_alnum_fraction_at_threshold():
    assert why("abcd" + "-" * 12) is None          # 4/16 = 0.25
    assert why("abc" + "-" * 13) == "alnum_fraction"
    # Non-ASCII letters count as alphanumeric, dashes of any width do not.
    assert why("ééé" + "—" * 9) is None
    assert why("éé" + "—" * 10) == "alnum_fraction"


def test_alnum_count_matches_str_isalnum_on_all_of_unicode():
    text = "".join(map(chr, range(sys.maxunicode + 1)))
    assert alnum_count(text) == sum(map(str.isalnum, text))
    assert alnum_count(code(1000)) == sum(map(str.isalnum, code(1000)))


# ----------------------------------------------------------------------------- xml
def test_xml_declaration_in_first_100_characters():
    tail = '"1.0"?>\n' + code(500)
    marker = "<?xml version="
    assert why(" " * (100 - len(marker)) + marker + tail) == "xml"
    assert why(" " * (101 - len(marker)) + marker + tail) is None


def test_xml_applies_to_every_language():
    doc = '<?xml version="1.0" encoding="utf-8"?>\n<root>\n' + "<item>value</item>\n" * 20 + "</root>\n"
    for lang in ("java", "javascript", "python", "csharp"):
        assert why(doc, lang=lang) == "xml"


# ----------------------------------------------------------------------------- html
def html_page(text: str, total: int) -> str:
    """A page of exactly `total` characters whose only visible text is `text`."""
    head, tail = "<html>\n<script>\n", f"</script>\n<p>{text}</p>\n</html>\n"
    fill = total - len(head) - len(tail)
    assert fill >= 0
    return head + ("ab cd\n" * (fill // 6 + 1))[:fill] + tail


def test_visible_html_text_strips_tags_scripts_styles_comments():
    page = ("<html><head><style>p {color: red}</style><script>var x = '<b>';</script></head>"
            "<!-- note -->\n<body>\n  <p>Hello   &amp;\n world</p></body></html>")
    assert visible_html_text(page) == "Hello & world"


def test_html_visible_text_thresholds():
    assert why(html_page("a" * 100, 500), lang="html") is None           # 100 chars, 20%
    assert why(html_page("a" * 99, 495), lang="html") == "html"          # under 100 characters
    assert why(html_page("a" * 100, 501), lang="html") == "html"         # under 20%
    # Only for HTML: the same file in another language is not judged by its visible text.
    assert why(html_page("a" * 10, 500), lang="javascript") is None


# ----------------------------------------------------------------------------- json / yaml
@pytest.mark.parametrize("lang", ["json", "yaml"])
def test_json_yaml_size_window(lang):
    assert why(code(50), lang=lang) is None
    assert why(code(5000), lang=lang) is None
    assert why(code(49), lang=lang) == "json_yaml_size"
    assert why(code(5001), lang=lang) == "json_yaml_size"


def test_json_yaml_window_does_not_touch_other_languages():
    assert why(code(49), lang="java") is None
    assert why(code(5001), lang="java") is None


# ----------------------------------------------------------------------------- autogen
@pytest.mark.parametrize("marker", AUTOGEN_MARKERS)
def test_autogen_markers_case_insensitive(marker):
    assert why("// " + marker.upper() + "\n" + code(300)) == "autogen"
    assert why("# " + marker.title() + "\n" + code(300)) == "autogen"


def test_autogen_only_in_first_200_characters():
    marker = "do not edit"
    assert why(code(200 - len(marker)) + marker + "\n" + code(300)) == "autogen"
    assert why(code(201 - len(marker)) + marker + "\n" + code(300)) is None


# ----------------------------------------------------------------------------- encoded data
def test_base64_run_at_1024_characters():
    def file_with(run: int) -> str:
        return code(2000) + 'data = "' + blob(run) + '";\n' + code(2000)
    assert why(file_with(1024)) is None
    assert why(file_with(1025)) == "encoded_data"


def test_encoded_fraction_at_half_the_file():
    run = 600
    data = 'd = "' + blob(run) + '";\n'
    assert why(data + code(2 * run - len(data))) is None             # exactly 50%
    assert why(data + code(2 * run - len(data) - 1)) == "encoded_data"


def test_hex_byte_arrays():
    def array(nbytes: int) -> str:
        items = [f"0x{i % 256:02x}" for i in range(nbytes)]
        rows = [", ".join(items[i:i + 12]) for i in range(0, nbytes, 12)]
        return "static const unsigned char font[] = {\n    " + ",\n    ".join(rows) + "\n};\n"
    assert why(code(3000) + array(16) + code(3000)) is None
    assert why(code(3000) + array(400) + code(3000)) == "encoded_data"
    def escaped(nbytes: int) -> str:
        return 'char *shellcode = "' + "".join(f"\\x{i * 7 % 256:02x}" for i in range(nbytes)) + '";\n'
    no_basic = {"basic": False}       # one string of escapes is also one long line
    assert why(code(3000) + escaped(256) + code(3000), config=no_basic) is None          # 1024 chars
    assert why(code(3000) + escaped(257) + code(3000), config=no_basic) == "encoded_data"
    # Many short rows of escapes: none is long, but together they are most of the file.
    rows = "".join('"' + "".join(f"\\x{(r + j) % 256:02x}" for j in range(16)) + '"\n' for r in range(40))
    assert why(code(200) + rows) == "encoded_data"
    assert why(code(3000) + rows) is None
    # Ordinary hex constants are not byte arrays.
    consts = "".join(f"#define FLAG_{i} 0x{1 << (i % 31):08x}\n" for i in range(200))
    assert why(consts) is None


def test_unicode_escape_runs():
    no_basic = {"basic": False}       # a long run of \\u escapes is also one long line
    def escapes(n: int) -> str:                # 6 characters each
        return code(3000) + 's = "' + "\\u00e9" * n + '";\n' + code(3000)
    assert why(escapes(170), config=no_basic) is None                 # 1020 characters
    assert why(escapes(171), config=no_basic) == "encoded_data"       # 1026


def test_encoded_thresholds_configurable():
    content = code(2000) + 'data = "' + blob(1025) + '";\n' + code(2000)
    assert why(content, config={"encoded_max_run": 2048}) is None
    assert why(content, config={"encoded_data": False}) is None


# ----------------------------------------------------------------------------- python syntax
PY2 = 'import sys\n\ndef main():\n    print "hello, world"\n    return 0\n\nsys.exit(main())\n'
PY3 = 'import sys\n\ndef main():\n    print("hello, world")\n    return 0\n\nsys.exit(main())\n'


def test_python2_print_statement_is_dropped():
    assert why(PY2, lang="python") == "python_syntax"
    assert why(PY3, lang="python") is None
    assert why(PY2, lang="ruby") is None            # only Python is parsed
    assert why("\ufeff" + PY3, lang="python") is None   # read as "utf-8", not "utf-8-sig"
    assert why("\ufeff" + PY2, lang="python") == "python_syntax"


def test_python_syntax_survives_warnings_as_errors():
    # An invalid escape warns while parsing; with warnings as errors that would be a SyntaxError.
    src = 'import re\nPATTERN = re.compile("\\d+")\n' + "\n" * 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert why(src, lang="python") is None
    assert not python_parses("x = (" * 200 + ")" * 200 + "\n(")
    assert not python_parses("def f(:\n")


def test_deeply_nested_python_is_dropped_not_crashed():
    assert why("x = " + "(" * 1000 + "1" + ")" * 1000 + "\n", lang="python",
               config={"max_line_length": 5000, "max_mean_line_length": 5000,
                       "min_alnum_fraction": 0.0}) == "python_syntax"


def test_real_stdlib_file_is_kept():
    path = Path(sysconfig.get_paths()["stdlib"]) / "json" / "__init__.py"
    assert FilterChain().reason(rec(path.read_text(encoding="utf-8"), "python", "json/__init__.py")) is None


def test_first_failing_filter_names_the_reason():
    assert why("# generated by hand-rolled tool\n" + PY2, lang="python") == "autogen"


# ----------------------------------------------------------------------------- config
def test_per_language_override_changes_only_that_language():
    cfg = FilterConfig.from_dict({"per_language": {"jupyter": {"max_line_length": 5000},
                                                   "python": {"python_syntax": False}}})
    long_line = code(20 * len(LINE)) + words(3000) + "\n" + code(20 * len(LINE))
    assert why(long_line, lang="jupyter", config=cfg) is None
    assert why(long_line, lang="python", config=cfg) == "max_line_length"
    assert why(long_line, lang="c", config=cfg) == "max_line_length"
    assert why(PY2, lang="python", config=cfg) is None
    assert why(PY2, lang="python") == "python_syntax"
    assert cfg.for_language("jupyter").max_line_length == 5000
    assert cfg.for_language("rust").max_line_length == 1000


def test_yaml_section_as_the_pipeline_passes_it():
    section = yaml.safe_load("""
filters:
  max_line_length: 1000
  max_mean_line_length: 100
  min_alnum_fraction: 0.25
  per_language:
    jupyter: {max_line_length: 5000}
    python: {python_syntax: false}
""")["filters"]
    cfg = FilterConfig.from_dict(section)
    assert cfg.min_alnum_fraction == 0.25 and cfg.per_language["python"] == {"python_syntax": False}
    assert FilterConfig.from_dict(cfg.to_dict()) == cfg
    assert FilterConfig.from_dict(None) == FilterConfig()


def test_unknown_key_is_named_with_a_suggestion():
    with pytest.raises(ValueError) as e:
        FilterConfig.from_dict({"max_line_lenght": 2000})
    assert "max_line_lenght" in str(e.value) and "did you mean 'max_line_length'" in str(e.value)
    with pytest.raises(ValueError) as e:
        FilterConfig.from_dict({"per_language": {"python": {"pyton_syntax": False}}})
    msg = str(e.value)
    assert "per_language.python" in msg and "pyton_syntax" in msg and "'python_syntax'" in msg
    with pytest.raises(ValueError, match="json_yaml_languages"):
        FilterConfig.from_dict({"per_language": {"json": {"json_yaml_languages": ["json"]}}})


@pytest.mark.parametrize("bad", [{"max_line_length": "1000"}, {"min_alnum_fraction": 1.5},
                                 {"python_syntax": "no"}, {"autogen_markers": "do not edit"},
                                 {"max_chars": -1}, {"per_language": {"go": {"basic": 0}}},
                                 {"per_language": ["go"]}, {"min_chars": 10, "max_chars": 5}])
def test_bad_values_are_rejected(bad):
    with pytest.raises(ValueError, match="filters"):
        FilterConfig.from_dict(bad)


# ----------------------------------------------------------------------------- counts
def test_counts_add_up_and_merge():
    records = [rec(code(300)), rec(""), rec("abc" + "-" * 13), rec(PY2, "python"),
               rec(PY3, "python"), rec(code(49), "json"), rec("x\x00y"), rec(code(1500))]
    chain = FilterChain()
    kept = list(chain.filter(records))
    st = chain.stats()
    assert len(kept) == st["kept"] == chain.kept == 3
    assert st["seen"] == chain.seen == len(records)
    assert st["kept"] + sum(st["dropped"].values()) == st["seen"]
    assert tuple(st["dropped"]) == REASONS
    assert {r: n for r, n in st["dropped"].items() if n} == {
        "empty": 1, "alnum_fraction": 1, "python_syntax": 1, "json_yaml_size": 1, "binary": 1}
    assert chain.counts == {"empty": 1, "alnum_fraction": 1, "python_syntax": 1,
                            "json_yaml_size": 1, "binary": 1}

    other = FilterChain()
    for r in records[:3]:
        other.reason(r)
    merged = FilterChain.merge_counts([st, other.stats()])
    assert merged["seen"] == 11 and merged["kept"] == 4
    assert merged["dropped"]["empty"] == 2 and merged["dropped"]["alnum_fraction"] == 2
    assert merged["kept"] + sum(merged["dropped"].values()) == merged["seen"]
    assert FilterChain.merge_counts([]) == {"seen": 0, "kept": 0, "dropped": dict.fromkeys(REASONS, 0)}
    with pytest.raises(ValueError, match="merge_counts"):
        FilterChain.merge_counts([{"seen": 1}])


def test_check_does_not_count():
    chain = FilterChain()
    assert chain.check(rec("")) == "empty"
    assert chain.seen == 0 and not chain.counts
