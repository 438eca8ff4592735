"""The results side: finished run folders into the published tables' layout (``distillers-collect``).

published (results.md §1-2 and each cell's reference settings), runs (reading run folders), labels
(row names, declared beside the methods), cells (runs grouped over trials), tables (markdown, CSV,
--compare), records (one JSON line per cell), plot (accuracy against cost), cli (the command line).
"""
