"""layermatte completion: a bash (and zsh, through bashcompinit) completion
script, generated from the parser itself so it never drifts from the options.

argparse has no completion of its own; argcomplete would add a dependency and
a hook that runs Python on every Tab. A static script is instant and enough
for commands, options and file names.
"""
from __future__ import annotations

import argparse
import sys

_TEMPLATE = """# layermatte {version}: eval "$(layermatte completion bash)" (zsh: autoload -U
# bashcompinit && bashcompinit first)
_layermatte() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} cmd="" n=0 w opts subs=""
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case $w in -*) ;; *) if [[ -z $cmd ]]; then cmd=$w; else n=$((n + 1)); fi ;; esac
    done
    case $cmd in
{cases}
    esac
    if [[ -z $cmd || $cur == -* ]]; then
        COMPREPLY=($(compgen -W "$opts" -- "$cur"))
    elif [[ -n $subs && $n == 0 ]]; then
        COMPREPLY=($(compgen -W "$subs" -- "$cur"))
    else
        COMPREPLY=($(compgen -f -- "$cur"))
    fi
}}
complete -o filenames -o bashdefault -F _layermatte layermatte
"""


def register(sub):
    p = sub.add_parser("completion", help="print a shell completion script (bash, zsh)",
                       description='Print a completion script: eval "$(layermatte completion bash)" '
                                   "in ~/.bashrc (zsh: after autoload -U bashcompinit && bashcompinit).")
    p.add_argument("shell", choices=["bash", "zsh"], help="the shell to complete in")
    p.set_defaults(run=run)


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted({o for a in parser._actions for o in a.option_strings})


def script() -> str:
    from . import build_parser
    from .. import __version__
    parser = build_parser()
    commands = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = action.choices
    cases = [f'        "") opts="{" ".join([*commands, *_options(parser)])}" ;;']
    for name, child in commands.items():
        subs = [n for a in child._actions if isinstance(a, argparse._SubParsersAction) for n in a.choices]
        cases.append(f'        {name}) opts="{" ".join(_options(child))}" subs="{" ".join(subs)}" ;;')
    return _TEMPLATE.format(version=__version__, cases="\n".join(cases))


def run(args) -> int:
    sys.stdout.write(script())
    return 0
