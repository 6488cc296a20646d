from django.urls import path

from lodger_demo import views

urlpatterns = [
    path("", views.chat_page, name="chat"),
    path("generate", views.generate, name="generate"),
    path("stream", views.stream, name="stream"),
    path("sync-generate", views.sync_generate, name="sync-generate"),
]
