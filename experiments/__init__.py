"""The paper's claims re-tested at small scale (issue 14); see RESULTS.md."""
