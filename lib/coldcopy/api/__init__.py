"""The monitor API's pure protocol (routes, events, auth, pagination) and its dashboard page."""
