//! Test infrastructure shared by the netns and vm tiers.
