"""Measure artifacts (quality, speed), write the report, apply the gate."""
