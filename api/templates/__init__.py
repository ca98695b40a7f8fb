"""HTML templates of the dashboard (api.dashboard); a package so they ship as package data."""
