"""Infrastructure: errors as one line, seeds, atomic files, locks, preemption signals, figures."""
