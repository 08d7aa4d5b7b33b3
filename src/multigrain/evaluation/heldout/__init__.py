"""evaluation/heldout"""
