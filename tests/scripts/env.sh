# Environment shared by the test set-up and the tests (sourced, not run).
export SLUICE_CACHE="${SLUICE_CACHE:-$HOME/.cache/sluice}"
export SLUICE_VENV="$SLUICE_CACHE/venv"
export PATH="$SLUICE_CACHE/bin:$SLUICE_VENV/bin:$PATH"
