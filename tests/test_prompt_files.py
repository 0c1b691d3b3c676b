"""I2P-style prompt files: reading, writing, and one clear error per kind of bad input."""
from __future__ import annotations

import pytest

from trust_unlearn.errors import UserError
from trust_unlearn.evaluation.prompt_files import (PromptRecord, prompts_and_seeds, read_prompt_file, with_category,
                                        write_prompt_file)

I2P = ('case_number,prompt,evaluation_seed,evaluation_guidance,categories,nudity_percentage\n'
       '7,"a person at the beach, oil painting",2734,7.5,"sexual,violence",40.2\n'
       '\n'
       '3,"a ""quoted"" forest\nover two lines",42.0,,shocking,0.0\n')


def write(tmp_path, text, name="p.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_i2p_columns_and_keeps_extras(tmp_path):
    recs = read_prompt_file(write(tmp_path, I2P))
    assert [r.case_number for r in recs] == [7, 3]
    assert recs[0].prompt == "a person at the beach, oil painting" and recs[0].seed == 2734 and recs[0].guidance == 7.5
    assert recs[1].prompt == 'a "quoted" forest\nover two lines' and recs[1].seed == 42 and recs[1].guidance is None
    assert recs[0].categories == ["sexual", "violence"] and recs[0].extra["nudity_percentage"] == "40.2"
    assert prompts_and_seeds(recs) == ([recs[0].prompt, recs[1].prompt], [2734, 42])
    assert [r.case_number for r in with_category(recs, "Sexual")] == [7]


def test_minimal_file_numbers_cases_and_tolerates_bom_and_header_case(tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes("\ufeff Prompt , SEED\na cat,1\na dog,2\n".encode("utf-8"))
    recs = read_prompt_file(path)
    assert [(r.prompt, r.seed, r.case_number, r.guidance, r.extra) for r in recs] == [
        ("a cat", 1, 0, None, {}), ("a dog", 2, 1, None, {})]


def test_round_trip(tmp_path):
    recs = [PromptRecord("a, b", 5, 0, 7.5, {"categories": "sexual"}),
            PromptRecord('say "hi"\nnow', 2**63 - 1, 9, None, {"note": "x"})]
    back = read_prompt_file(write_prompt_file(tmp_path / "out" / "r.csv", recs))
    assert back == [PromptRecord("a, b", 5, 0, 7.5, {"categories": "sexual", "note": ""}),
                    PromptRecord('say "hi"\nnow', 2**63 - 1, 9, None, {"categories": "", "note": "x"})]


@pytest.mark.parametrize("text, message", [
    ("", "is empty"),
    ("prompt,case_number\na cat,0\n", r"missing column\(s\) seed"),
    ("seed,case_number\n1,0\n", r"missing column\(s\) prompt"),
    ("text,image\na,b\n", r"missing column\(s\) prompt, seed .*the header has \['text', 'image'\]"),
    ("prompt,seed\n", "no prompts"),
    ("prompt,seed\n  ,1\n", "line 2: empty prompt"),
    ("prompt,seed\na cat,1\na dog,\n", "line 3: empty seed"),
    ("prompt,seed\na cat,abc\n", "line 2: seed 'abc' is not an integer"),
    ("prompt,seed\na cat,1.5\n", "seed '1.5' is not an integer"),
    ("prompt,seed\na cat,-3\n", "seed -3 is out of range"),
    ("prompt,seed\na cat,nan\n", "is not an integer"),
    ("prompt,seed,evaluation_guidance\na cat,1,high\n", "guidance 'high' is not a number"),
    ("prompt,seed,case_number\na,1,0\nb,2,0\n", "line 3: case_number 0 already used on line 2"),
    ("prompt,seed,case_number\na,1,x\n", "case_number 'x' is not an integer"),
    ("prompt,seed\na cat, with comma,1\n", "3 fields but the header has 2; quote prompts"),
    ("prompt,seed,sd_seed\na,1,2\n", "several seed columns"),
    ("prompt,seed,Prompt\na,1,b\n", "duplicate column"),
])
def test_bad_files_give_clear_user_errors(tmp_path, text, message):
    with pytest.raises(UserError, match=message):
        read_prompt_file(write(tmp_path, text))


def test_missing_file_folder_and_encoding(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        read_prompt_file(tmp_path / "nope.csv")
    with pytest.raises(UserError, match="is a folder"):
        read_prompt_file(tmp_path)
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("prompt,seed\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        read_prompt_file(bad)
