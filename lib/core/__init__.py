"""The algorithms the paper names: schedules, similarity and diversity losses, RTD, frozen stages."""
