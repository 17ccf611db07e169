# Sourced by the GPU scripts: python312 ARGS... runs a Python 3.12 of this machine (the accelerator's
# version), through pyenv's shim when plain `python3.12` is not on the path by itself.
python312() {
    if python3.12 -V > /dev/null 2>&1; then
        python3.12 "$@"
    elif command -v pyenv > /dev/null && version=$(pyenv versions --bare | grep '^3\.12' | tail -1) && [ -n "$version" ]; then
        PYENV_VERSION=$version python3.12 "$@"
    else
        echo "no Python 3.12 on this machine (the accelerator's version)" >&2
        return 1
    fi
}
