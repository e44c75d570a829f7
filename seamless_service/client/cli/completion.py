"""`seamless-service completion bash|zsh`: a shell completion script, generated from the parser.

Why a generated script and not argcomplete: argcomplete runs Python (and would build this
whole parser, ~60 ms) on every TAB, and would have to bypass the thin entry point that keeps
ordinary calls cheap. The script is plain shell: the subcommands, their flags and every
flag's choices (service names, statuses, transports, ...) are written into it when it is
generated, so it never falls behind the parser; cluster names are read at TAB time from
the top-level keys of ~/.seamless/clusters.yaml and ~/.seamless/clusters/*.yaml (a sed,
no Python). zsh runs the same functions through its bashcompinit layer.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

SHELLS = ("bash", "zsh")
HELP = """\
Print a completion script for bash or zsh: subcommands, flags, service, status and
transport names, and cluster names from ~/.seamless/clusters.yaml.

examples:
  eval "$(seamless-service completion bash)"     # in ~/.bashrc
  eval "$(seamless-service completion zsh)"      # in ~/.zshrc
  seamless-service completion bash > ~/.local/share/bash-completion/completions/seamless-service
"""
# Completion of a flag's value, by kind; any other value-taking flag completes nothing.
CLUSTERS, FILES, DIRS = "@clusters", "@files", "@dirs"


class Node:
    """One parser of the tree (`""` is the top level, `"agent start"` a nested one).
    (A plain class: this module is imported whenever the parser is built.)"""

    def __init__(self, options: list[str] | None = None, value_options: list[str] | None = None,
                 words: list[str] | None = None, values: dict[str, str] | None = None):
        self.options = [] if options is None else options
        self.value_options = [] if value_options is None else value_options  # flags taking a value
        self.words = [] if words is None else words  # subcommands or a positional's choices
        self.values = {} if values is None else values  # flag -> its choices or a kind


def add_parser(sub: argparse._SubParsersAction, build_parser: Callable[[], argparse.ArgumentParser]) -> None:
    """`build_parser` makes the whole tree the script describes (main.py passes its own: this
    module does not import main.py, which imports this one)."""
    p = sub.add_parser("completion", help="print a bash or zsh completion script", description=HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(func=functools.partial(run, build_parser=build_parser))


def run(args: argparse.Namespace, *, build_parser: Callable[[], argparse.ArgumentParser]) -> int:
    sys.stdout.write(script(args.shell, build_parser()))
    return 0


def _value_kind(action: argparse.Action) -> str:
    if action.choices:
        return " ".join(str(choice) for choice in action.choices)
    if action.dest == "cluster":
        return CLUSTERS
    if action.metavar in ("PATH", "FILE"):
        return FILES
    if action.metavar == "DIR":
        return DIRS
    return ""


def nodes(parser: argparse.ArgumentParser) -> dict[str, Node]:
    """Every parser of the tree by its path of subcommand words."""
    found: dict[str, Node] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        node = found[path] = Node()
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    node.words.append(name)
                    walk(child, f"{path} {name}".strip())
            elif not action.option_strings:
                for choice in action.choices or ():  # `demo start`: a leaf with its parent's flags
                    node.words.append(str(choice))
                    found[f"{path} {choice}".strip()] = Node(node.options, node.value_options, [], node.values)
            elif action.help is not argparse.SUPPRESS:
                node.options += [o for o in action.option_strings if o not in node.options]
                if action.nargs not in (0, "?"):  # `--watch [SECONDS]` may be followed by a flag
                    node.value_options += action.option_strings
                    for option in action.option_strings:
                        node.values[option] = _value_kind(action)

    walk(parser, "")
    return found


def _quoted(word: str) -> str:
    return "'" + word.replace("'", "'\\''") + "'"


def _node_cases(tree: dict[str, Node]) -> str:
    lines = []
    for path, node in tree.items():
        lines.append(f"        {_quoted(path)}) _ss_opts={_quoted(' '.join(node.options))}; "
                     f"_ss_valopts={_quoted(' '.join(node.value_options))}; _ss_words={_quoted(' '.join(node.words))};;")
    return "\n".join(lines)


def _value_cases(tree: dict[str, Node]) -> str:
    lines = []
    for path, node in tree.items():
        for option, kind in node.values.items():
            if kind:
                lines.append(f"        {_quoted(f'{path} {option}')}) _ss_values={_quoted(kind)};;")
    return "\n".join(lines)


BODY = r"""
# The top-level keys of the clusters files (local_cluster is a setting, not a cluster).
_seamless_service_clusters() {
    local f
    if [ -n "${ZSH_VERSION-}" ]; then setopt localoptions nullglob; fi
    for f in "$HOME/.seamless/clusters.yaml" "$HOME"/.seamless/clusters/*.yaml; do
        [ -f "$f" ] && sed -n 's/^\([A-Za-z0-9_][A-Za-z0-9_.-]*\)[[:space:]]*:.*/\1/p' "$f"
    done | grep -vx 'local_cluster'
}

# Sets _ss_opts (flags), _ss_valopts (flags taking a value), _ss_words (subcommands or
# choices of a positional) of one parser of the command tree.
_seamless_service_node() {
    _ss_opts=; _ss_valopts=; _ss_words=
    case "$1" in
@NODES@
    esac
}

# Sets _ss_values: what follows flag $2 of parser $1 (its choices, or @clusters/@files/@dirs).
_seamless_service_values() {
    _ss_values=
    case "$1 $2" in
@VALUES@
    esac
}

# Adds to COMPREPLY the words of $1 that begin with $2 (not `compgen -W`: zsh's emulation of
# it does not filter, and a bash-only path would leave zsh's behaviour untested).
_seamless_service_match() {
    local w
    for w in $1; do
        case "$w" in "$2"*) COMPREPLY+=("$w");; esac
    done
}

_seamless_service() {
    if [ -n "${ZSH_VERSION-}" ]; then  # bash's semantics: 0-based arrays, split words, no glob errors
        setopt localoptions ksharrays shwordsplit nullglob
    fi
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" node= word i
    local _ss_opts _ss_valopts _ss_words _ss_values
    _seamless_service_node ""
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case " $_ss_valopts " in
            *" $word "*) i=$((i + 1)); continue;;   # a flag and its value
        esac
        case "$word" in -*) continue;; esac
        case " $_ss_words " in
            *" $word "*) node="${node:+$node }$word"; _seamless_service_node "$node";;
        esac
    done
    COMPREPLY=()
    case " $_ss_valopts " in
        *" $prev "*)
            _seamless_service_values "$node" "$prev"
            case "$_ss_values" in
                @clusters) _seamless_service_match "$(_seamless_service_clusters)" "$cur";;
                @files) COMPREPLY=($(compgen -f -- "$cur"));;
                @dirs) COMPREPLY=($(compgen -d -- "$cur"));;
                ?*) _seamless_service_match "$_ss_values" "$cur";;
            esac
            return 0;;
    esac
    case "$cur" in
        -*) _seamless_service_match "$_ss_opts" "$cur";;
        *) _seamless_service_match "$_ss_words" "$cur";;
    esac
    return 0
}
"""

BASH_HEAD = """\
# bash completion for seamless-service (generated by `seamless-service completion bash`).
# Use: eval "$(seamless-service completion bash)" in ~/.bashrc
"""
BASH_TAIL = "complete -F _seamless_service seamless-service\n"
ZSH_HEAD = """\
# zsh completion for seamless-service (generated by `seamless-service completion zsh`).
# Use: eval "$(seamless-service completion zsh)" in ~/.zshrc. zsh runs the bash functions
# below through bashcompinit (completion must be initialised first: compinit).
(( ${+functions[compdef]} )) || { autoload -U +X compinit && compinit -i; }
autoload -U +X bashcompinit && bashcompinit
"""


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for `shell` ("bash" or "zsh")."""
    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r} (known: {', '.join(SHELLS)})")
    tree = nodes(parser)
    body = BODY.replace("@NODES@", _node_cases(tree)).replace("@VALUES@", _value_cases(tree))
    return (BASH_HEAD if shell == "bash" else ZSH_HEAD) + body + BASH_TAIL
