"""The Streamlit operator dashboard (``streamlit run dashboards/app.py``) and the pieces it is built from."""
