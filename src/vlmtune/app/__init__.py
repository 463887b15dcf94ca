"""Try a tuned model: a terminal chat and a web page, base and tuned side by side."""
