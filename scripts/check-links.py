#!/usr/bin/env python3
"""Every link and path the docs name exists: run by scripts/test.sh, offline, standard library only.

Checks README.md, every docs/*.md, deploy/README.md and any other tracked .md file:
- every relative markdown link [x](path) or [x](path#anchor) points to an existing file or
  folder, and an anchor into a .md file (or into the file itself: [x](#anchor)) matches one of
  its headings, slugged as GitHub does (lowercase, spaces to '-', punctuation dropped except '-'
  and '_'; a repeated heading gets -1, -2, ...);
- every path named in backticks that looks like a repository path (it contains a '/' or ends in
  a file extension such as .rs .md .sh), with no spaces, '<', '*', '$', '{', '…', and not
  starting with '/', 'http', '-' (so no HTTP route, URL or flag), exists relative to the
  repository root or to the markdown file's own folder (code blocks are not read).

External http(s) and mailto links are not fetched. Prints `FILE:LINE: broken link/path X` for
each broken one and exits 1 if any; otherwise prints one summary line and exits 0.
"""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Paths a fresh clone does not have, named on purpose: build and run outputs (target/ is made by
# cargo and the scripts), and the development machines' shared folder outside the repository.
ALLOWED_MISSING_PREFIXES = ("target/", "../shared/")

EXTENSIONS = (
    ".rs", ".md", ".sh", ".py", ".sql", ".toml", ".yml", ".yaml", ".json", ".html", ".conf",
)

LINK = re.compile(r"(?<!!)\[(?:[^\]\[]|\[[^\]]*\])*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
IMAGE = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def markdown_files():
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.md"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    ).stdout.split()
    return sorted(f for f in out if os.path.isfile(os.path.join(ROOT, f)))


def slug(heading):
    text = re.sub(r"`([^`]*)`", r"\1", heading)  # code spans keep their text
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)  # links keep their text
    text = text.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)  # \w keeps letters, digits and '_' (Unicode too)
    return text.replace(" ", "-")


_anchors = {}


def anchors(path):
    """The heading anchors of a markdown file, as GitHub makes them."""
    if path not in _anchors:
        seen = {}
        found = set()
        in_fence = False
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.lstrip().startswith("```"):
                    in_fence = not in_fence
                    continue
                m = None if in_fence else HEADING.match(line)
                if not m:
                    continue
                s = slug(m.group(2))
                n = seen.get(s, 0)
                seen[s] = n + 1
                found.add(s if n == 0 else f"{s}-{n}")
        _anchors[path] = found
    return _anchors[path]


def looks_like_path(text):
    """A repository path: a '/' in it or a file extension, and nothing that a path here never has
    (spaces, placeholders, globs, variables, routes and URLs, flags)."""
    if any(c in text for c in " <>*${}…|,;=()\"'"):
        return False
    if text.startswith(("/", "http", "-", "~")) or "://" in text:
        return False
    if "/" in text:
        return True
    return text.lower().endswith(EXTENSIONS)


def exists(target, md_dir):
    target = target.rstrip("/") or target
    return os.path.exists(os.path.join(ROOT, target)) or os.path.exists(
        os.path.join(ROOT, md_dir, target)
    )


def allowed_missing(target):
    return target.startswith(ALLOWED_MISSING_PREFIXES)


def check(md):
    broken = []
    md_path = os.path.join(ROOT, md)
    md_dir = os.path.dirname(md)
    checked = 0
    in_fence = False
    with open(md_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for number, line in enumerate(lines, 1):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        # Links, outside code spans.
        plain = CODE.sub("", line)
        for m in list(LINK.finditer(plain)) + list(IMAGE.finditer(plain)):
            target = m.group(1)
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            checked += 1
            file_part, _, anchor = target.partition("#")
            if file_part:
                full = os.path.normpath(os.path.join(ROOT, md_dir, file_part))
                if not os.path.exists(full):
                    broken.append((number, target))
                    continue
            else:
                full = md_path
            if anchor and full.endswith(".md") and anchor not in anchors(full):
                broken.append((number, target))
        # Paths in backticks.
        for m in CODE.finditer(line):
            text = m.group(1).strip()
            if not looks_like_path(text):
                continue
            text = text.split("#", 1)[0].split(":", 1)[0]
            if not text:
                continue
            checked += 1
            if exists(text, md_dir) or allowed_missing(text):
                continue
            broken.append((number, text))
    return checked, broken


def main():
    files = markdown_files()
    total = 0
    bad = 0
    for md in files:
        checked, broken = check(md)
        total += checked
        for number, target in broken:
            print(f"{md}:{number}: broken link/path {target}")
            bad += 1
    if bad:
        print(f"check-links: {bad} broken of {total} links and paths in {len(files)} markdown files")
        return 1
    print(f"check-links: {total} links and paths in {len(files)} markdown files, all exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
