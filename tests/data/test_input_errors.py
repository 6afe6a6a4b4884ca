"""Data inputs a run cannot use raise ``InputError`` naming the argument (flag), the value and what is expected:
text files (missing, a folder, empty, binary, not UTF-8, too short to split), image folders (missing, a file,
empty, no images, no label folders, one label), column names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hf_deq.data.errors import InputError
from hf_deq.data.images import check_image_folder, load_image_datasets
from hf_deq.data.text import check_text_file, load_text_datasets


def _refused(fn, *args, argument: str, fragment: str, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    assert info.value.argument == argument and info.value.flag == f"--{argument}"
    assert fragment in str(info.value), str(info.value)
    return info.value


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "no such file"),
        ("folder", "is a folder"),
        (b"", "is empty"),
        (b"abc\x00def", "binary (a NUL byte at byte offset 3)"),
        ("caf\u00e9 au lait\n".encode("latin-1"), "not UTF-8 text (byte 0xe9 at byte offset 3)"),
        ("caf\u00e9".encode()[:-1], "ends inside a character at byte offset 3"),
    ],
    ids=["missing", "folder", "empty", "binary", "latin-1", "truncated"],
)
def test_a_text_file_that_is_not_utf8_text_is_refused_naming_it(tmp_path, content, fragment):
    path = tmp_path / "input.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    err = _refused(check_text_file, path, "validation_file", argument="validation_file", fragment=fragment)
    assert str(path) in str(err) and err.value == str(path)


def test_the_byte_offset_is_exact_across_chunks_and_valid_text_passes(tmp_path):
    text = "\u00e9" * 10  # 2 bytes each: chunks of 3 bytes split characters
    path = tmp_path / "ok.txt"
    path.write_text(text, encoding="utf-8")
    check_text_file(path, chunk_size=3)
    path.write_bytes(text.encode() + b"ab\xffcd")
    _refused(check_text_file, path, chunk_size=3, argument="train_file", fragment="at byte offset 22")


def test_a_one_line_text_file_is_too_little_text_for_a_split(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("a single line of text")
    _refused(
        load_text_datasets,
        train_file=str(path),
        argument="train_file",
        fragment="holds 1 line(s): too little text for a train/validation split",
    )


def test_a_wrong_text_column_names_the_columns(tmp_path):
    path = tmp_path / "two.txt"
    path.write_text("first line\nsecond line\n")
    _refused(
        load_text_datasets,
        train_file=str(path),
        text_column_name="content",
        argument="text_column_name",
        fragment="'content' is not a column of the dataset; its columns: ['text']",
    )


def _image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(path)


@pytest.mark.parametrize(
    ("layout", "fragment"),
    [
        (None, "no such folder"),
        ("file", "is a file"),
        ([], "is empty"),
        (["cat/notes.txt"], "holds no image files"),
        (["a.png", "b.png"], "holds images but no label folders"),
        (["cat/a.png", "cat/b.png"], "holds images of 1 label(s) (['cat']); a classifier needs at least 2"),
    ],
    ids=["missing", "file", "empty", "no-images", "no-label-folders", "one-label"],
)
def test_an_unusable_image_folder_is_refused_naming_it(tmp_path, layout, fragment):
    root = tmp_path / "train"
    if layout == "file":
        root.write_text("not a folder")
    elif layout is not None:
        root.mkdir()
        for name in layout:
            if name.endswith(".png"):
                _image(root / name)
            else:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).write_text("x")
    _refused(check_image_folder, root, argument="train_dir", fragment=fragment)
    _refused(load_image_datasets, train_dir=str(root), argument="train_dir", fragment=fragment)


def test_image_folders_with_enough_labels_pass(tmp_path):
    for name in ("cat/a.png", "dog/deeper/b.png"):
        _image(tmp_path / "train" / name)
    check_image_folder(tmp_path / "train")
    _image(tmp_path / "val" / "cat" / "c.png")
    check_image_folder(tmp_path / "val", "validation_dir", min_classes=1)


@pytest.mark.parametrize("column", ["image_column_name", "label_column_name"])
def test_a_wrong_image_or_label_column_names_the_columns(column):
    _refused(
        load_image_datasets,
        **{column: "pixels"},
        argument=column,
        fragment="'pixels' is not a column of the dataset; its columns: ['image', 'label']",
    )


@pytest.mark.parametrize("path", ["", " ", "name "], ids=["empty", "blank", "trailing-space"])
def test_an_empty_or_blank_path_is_shown_quoted(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _refused(check_text_file, path, argument="train_file", fragment=f"{path!r}: no such file")
    _refused(check_image_folder, path, argument="train_dir", fragment=f"{path!r}: no such folder")
