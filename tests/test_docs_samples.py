"""Every code sample in the docs is executed here, so none can drift from the code.

For each Markdown page (docs/*.md and README.md) every ```python block is run,
in order, in one namespace per page: a later block may use the names an earlier
one defined. Each page gets a fresh in-memory database: ``$BLUESTREAK_DB_URL``
names a memory:// database of its own, so ``Bluestreak()`` uses it.

- Blocks may ``await`` at top level; they run in the page's event loop. A block
  without top-level ``await`` runs outside it, so ``asyncio.run(main())`` works.
- A block of ``>>>`` lines is an interactive session: it is run as a doctest.
- A block whose first line is ``# test: skip — <reason>`` is not run; the reason
  is required, and skips are counted (they must stay rare).
- After the page has run, the ``test_*`` functions it defined that take no
  arguments are called: a sample test is run as well as defined. (Those that need
  fixtures are collected by tests/test_docs_testing.py.)
- Names the functions of a block read as globals must be defined by the page, so
  a handler that is only defined, never run, cannot call an undefined helper.

``# test: run`` (the first line of some blocks of testing.md and observability.md)
marks the blocks tests/test_docs_testing.py imports; it means nothing here.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import dis
import doctest
import inspect
import logging
import re
import types
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bluestreak.memory import reset_memory

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted((ROOT / "docs").glob("*.md"))  # README.md's samples run as files: tests/test_readme.py
FENCE = re.compile(r"^```(?P<lang>[\w+-]*)[^\n]*\n(?P<code>.*?)^```[ \t]*$", re.DOTALL | re.MULTILINE)
PYTHON = {"python", "py", "python3"}
SKIP = re.compile(r"#\s*test:\s*skip\b\s*(?:[—:-]+\s*)?(?P<reason>.*)")
BLOCK_TIMEOUT = 30.0  # real seconds one block may take
MAX_SKIPPED_SHARE = 0.10


@dataclass
class Block:
    path: Path
    line: int  # line number, in the page, of the block's first line
    code: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def skip_reason(self) -> str | None:
        first = self.code.split("\n", 1)[0].strip()
        match = SKIP.fullmatch(first)
        return None if match is None else match["reason"].strip()

    @property
    def is_session(self) -> bool:
        return self.code.lstrip().startswith(">>>")


def python_blocks(path: Path) -> list[Block]:
    text = path.read_text(encoding="utf-8")
    return [
        Block(path, text.count("\n", 0, m.start("code")) + 1, m["code"])
        for m in FENCE.finditer(text)
        if m["lang"].lower() in PYTHON
    ]


ALL_BLOCKS = [block for page in PAGES for block in python_blocks(page)]


def code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield const
            yield from code_objects(const)


def undefined_globals(code: types.CodeType, namespace: dict[str, Any]) -> set[str]:
    """Globals that the functions, methods and lambdas of ``code`` read and the page does not define."""
    names = {
        ins.argval for inner in code_objects(code) for ins in dis.get_instructions(inner) if ins.opname == "LOAD_GLOBAL"
    }
    return {name for name in names if name not in namespace and not hasattr(builtins, name)}


def run_block(block: Block, namespace: dict[str, Any], runner: asyncio.Runner) -> types.CodeType | None:
    if block.is_session:
        test = doctest.DocTestParser().get_doctest(block.code, namespace, block.where, str(block.path), block.line - 1)
        result = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS).run(test, clear_globs=False)
        assert not result.failed, f"{block.where}: {result.failed} example(s) of the session failed (output above)"
        return None
    source = "\n" * (block.line - 1) + block.code
    code = compile(source, str(block.path), "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    if code.co_flags & inspect.CO_COROUTINE:
        runner.run(asyncio.wait_for(eval(code, namespace), BLOCK_TIMEOUT))
    else:  # no loop runs meanwhile: the block may call asyncio.run()
        exec(code, namespace)
    return code


def test_the_docs_have_python_samples() -> None:
    assert len(ALL_BLOCKS) >= 40
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        # A fence the pattern above does not see (indented, say) would escape the test.
        fences = len(re.findall(r"^[ \t>]*```(?:python|py|python3)\b", text, re.MULTILINE | re.IGNORECASE))
        assert fences == sum(block.path == page for block in ALL_BLOCKS), page


def test_skips_are_explained_and_rare() -> None:
    skipped = [block for block in ALL_BLOCKS if block.skip_reason is not None]
    for block in skipped:
        assert block.skip_reason, f"{block.where}: '# test: skip' needs a reason: '# test: skip — <why>'"
    assert len(skipped) <= MAX_SKIPPED_SHARE * len(ALL_BLOCKS), [b.where for b in skipped]
    print(f"{len(ALL_BLOCKS) - len(skipped)} doc samples run, {len(skipped)} skipped:")
    for block in skipped:
        print(f"  {block.where}: {block.skip_reason}")


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_the_samples_of_the_page_run(page: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    memory_name = f"docs-{page.stem}-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("BLUESTREAK_DB_URL", f"memory://{memory_name}")
    namespace: dict[str, Any] = {"__name__": f"docs_{page.stem}", "__file__": str(page)}
    compiled: list[tuple[Block, types.CodeType]] = []
    ran = skipped = 0
    logger = logging.getLogger("bluestreak")  # a page may configure it (observability.md does): undone below
    handlers, level = list(logger.handlers), logger.level
    try:
        with asyncio.Runner() as runner:
            for block in python_blocks(page):
                if block.skip_reason is not None:
                    skipped += 1
                    continue
                code = run_block(block, namespace, runner)
                if code is not None:
                    compiled.append((block, code))
                ran += 1
            for name, test in list(namespace.items()):
                if name.startswith("test_") and inspect.isfunction(test) and not inspect.signature(test).parameters:
                    result = test()
                    if inspect.iscoroutine(result):
                        runner.run(asyncio.wait_for(result, BLOCK_TIMEOUT))
    finally:
        reset_memory(memory_name)
        logger.handlers[:] = handlers
        logger.setLevel(level)
    for block, code in compiled:
        missing = undefined_globals(code, namespace)
        assert not missing, f"{block.where}: the sample uses names the page never defines: {sorted(missing)}"
    print(f"{page.relative_to(ROOT)}: {ran} blocks run, {skipped} skipped")
