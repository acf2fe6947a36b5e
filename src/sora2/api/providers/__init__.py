"""Video providers behind one interface: `local` (renders offline) and `openai` (Videos API)."""
