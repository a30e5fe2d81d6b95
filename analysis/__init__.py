"""From stored sweep records to tidy tables, Pareto frontiers, AUP scores and paper tables."""
